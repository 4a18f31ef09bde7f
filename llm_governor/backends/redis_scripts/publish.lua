-- Publish one process's status until now + ttl; drop expired ones.
-- KEYS: procs
-- ARGV: now override, process id, ttl, JSON document
local now = clock(ARGV[1])
local raw = redis.call('HGETALL', KEYS[1])
for k = 1, #raw, 2 do
  local expires = string.match(raw[k + 1], '^(%S+) ')
  if tonumber(expires) <= now then redis.call('HDEL', KEYS[1], raw[k]) end
end
redis.call('HSET', KEYS[1], ARGV[2], fmt(now + tonumber(ARGV[3])) .. ' ' .. ARGV[4])
return 1
