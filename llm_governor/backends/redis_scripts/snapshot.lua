-- Everything status, health, exports and gauges read, in one call that writes nothing.
-- KEYS: svc, leases, spend, ctr, emergency, procs
-- ARGV: now override, glob of the scope keys to include ('' for none)
-- Returns: now, HGETALL svc, leases, spend, ctr, the emergency flag, HGETALL procs,
-- then scope key, value, key, value, ...
local now = clock(ARGV[1])
local out = {fmt(now)}
for i = 1, 4 do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end
out[#out + 1] = redis.call('GET', KEYS[5]) or ''
out[#out + 1] = redis.call('HGETALL', KEYS[6])
local found = {}
if ARGV[2] ~= '' then
  local cursor = '0'
  repeat
    local r = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', 1000)
    cursor = r[1]
    for _, key in ipairs(r[2]) do
      local value = redis.call('GET', key)
      if value then
        found[#found + 1] = key
        found[#found + 1] = value
      end
    end
  until cursor == '0'
end
out[#out + 1] = found
return out
