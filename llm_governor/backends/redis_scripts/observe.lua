-- Fold an attempt's outcome into the service state.
-- KEYS: svc, leases
-- ARGV: now override, service, outcome, provider limits, limits, age, sent count (see
--       observe in common.lua)
local now = clock(ARGV[1])
local s = load_state(redis.call('HGET', KEYS[1], ARGV[2]))
local reserved, in_flight = 0, 0
if needs_in_flight(s, ARGV[4], ARGV[7]) then
  reserved, in_flight = scan_leases(KEYS[2], now, ARGV[2], nil, false)
end
s = observe(s, ARGV[3], ARGV[4], ARGV[5], now, in_flight, ARGV[6], ARGV[7])
redis.call('HSET', KEYS[1], ARGV[2], dump_state(s))
return 1
