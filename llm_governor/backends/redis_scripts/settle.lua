-- Settle one call: release its lease, charge its cost to every budget window,
-- fold in the last attempt's outcome, count it.
-- KEYS: svc, leases, spend, ctr
-- ARGV: now override, lease id ('' = none), service, model, job ('' = none),
--       status, attempts, cost (nanos), windows, then outcome ('' = no
--       observation), provider limits, limits (see observe in common.lua)
local K_SVC, K_LEASES, K_SPEND, K_CTR = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = clock(ARGV[1])
local service, model, job, status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local attempts, cost = tonumber(ARGV[7]), tonumber(ARGV[8])
local ws = read_windows(ARGV[9])
if ARGV[2] ~= '' then redis.call('HDEL', K_LEASES, ARGV[2]) end
if cost ~= 0 and #ws > 0 then
  local spends = load_spends(K_SPEND, ws)
  for _, w in ipairs(ws) do
    local start, spent = rolled(spends, w, now)
    redis.call('HSET', K_SPEND, w.name, fmt(start) .. ' ' .. fmt(spent + cost))
  end
end
if ARGV[10] ~= '' then
  local s = observe(load_state(redis.call('HGET', K_SVC, service)), ARGV[10], ARGV[11],
    ARGV[12], now)
  redis.call('HSET', K_SVC, service, dump_state(s))
end
redis.call('HINCRBY', K_CTR, 'calls|' .. service .. '|' .. model .. '|' .. status, 1)
if cost ~= 0 then
  redis.call('HINCRBY', K_CTR, 'cost|' .. service .. '|' .. model, ARGV[8])
  if job ~= '' then redis.call('HINCRBY', K_CTR, 'job|' .. job, ARGV[8]) end
end
if attempts > 1 then redis.call('HINCRBY', K_CTR, 'retries|' .. service, attempts - 1) end
return 1
