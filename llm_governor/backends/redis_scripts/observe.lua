-- Fold an intermediate attempt's outcome into the service state.
-- KEYS: svc
-- ARGV: now override, service, outcome, provider limits, limits (see observe in common.lua)
local now = clock(ARGV[1])
local s = observe(load_state(redis.call('HGET', KEYS[1], ARGV[2])), ARGV[3], ARGV[4], ARGV[5],
  now)
redis.call('HSET', KEYS[1], ARGV[2], dump_state(s))
return 1
