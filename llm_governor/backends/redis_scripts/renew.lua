-- Extend the leases that still exist to now + ttl (a live process's heartbeat).
-- KEYS: leases
-- ARGV: now override, ttl, lease ids...
local now = clock(ARGV[1])
local expires = fmt(now + tonumber(ARGV[2]))
local renewed = 0
for k = 3, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[k])
  if raw then
    -- keep " nanos service" (string.find returns start and end: take the start only)
    local space = string.find(raw, ' ', 1, true)
    redis.call('HSET', KEYS[1], ARGV[k], expires .. string.sub(raw, space))
    renewed = renewed + 1
  end
end
return renewed
