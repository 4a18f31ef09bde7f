-- Add what a process counted and spent while Redis was away.
-- KEYS: ctr, spend
-- ARGV: n, then n (counter, amount); m, then m (window, start, spent nanos)
local n = tonumber(ARGV[1])
for k = 1, n do
  redis.call('HINCRBY', KEYS[1], ARGV[2 * k], ARGV[2 * k + 1])
end
local base = 2 * n + 2
for k = 0, tonumber(ARGV[base]) - 1 do
  local name, start, spent = ARGV[base + 1 + 3 * k], tonumber(ARGV[base + 2 + 3 * k]),
    tonumber(ARGV[base + 3 + 3 * k])
  local raw = redis.call('HGET', KEYS[2], name)
  local old_start, old_spent = start, 0
  if raw then
    local a, b = string.match(raw, '^(%S+) (%S+)$')
    old_start, old_spent = tonumber(a), tonumber(b)
  end
  if old_start == start then
    redis.call('HSET', KEYS[2], name, fmt(start) .. ' ' .. fmt(old_spent + spent))
  elseif old_start < start then
    redis.call('HSET', KEYS[2], name, fmt(start) .. ' ' .. fmt(spent))
  end
end
return 1
