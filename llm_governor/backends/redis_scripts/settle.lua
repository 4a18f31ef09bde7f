-- Settle one call (or charge one lost attempt): release its lease, charge its
-- cost to every budget window, fold in the last attempt's outcome, count it.
-- Idempotent per settle id: a settlement replayed after a timeout that the
-- server did apply (or replayed from the outage journal) counts once.
-- Returns what it charged: (scope value or '' for the global budget, window,
-- spent before, spent after) per window, flattened; nothing when replayed.
-- KEYS: svc, leases, spend, ctr, done, then one key per scope value charged
-- ARGV: now override, lease id ('' = none), service, model, job ('' = none),
--       status, attempts, cost (nanos), windows, final (1/0), overrun (nanos),
--       settle id ('' = not idempotent), limit scope key, the scope values'
--       windows (names, comma-separated, one group per scope key, ';' between),
--       then outcome ('' = no observation), provider limits, limits, age, sent count
--       (see observe in common.lua)
local K_SVC, K_LEASES, K_SPEND, K_CTR, K_DONE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = clock(ARGV[1])
local settle_id = ARGV[12]
redis.call('ZREMRANGEBYSCORE', K_DONE, '-inf', now)
if ARGV[2] ~= '' and redis.call('HDEL', K_LEASES, ARGV[2]) == 0
    and redis.call('ZSCORE', K_DONE, ARGV[2]) then
  return {} -- its lease expired and was charged already: count it once
end
if settle_id ~= '' then
  if redis.call('ZSCORE', K_DONE, settle_id) then return {} end
  redis.call('ZADD', K_DONE, now + 3600, settle_id)
end
local service, model, job, status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local attempts, cost = tonumber(ARGV[7]), tonumber(ARGV[8])
local ws = read_windows(ARGV[9])
local charged = {}
if cost ~= 0 and #ws > 0 then
  local spends = load_spends(K_SPEND, ws)
  for _, w in ipairs(ws) do
    local start, spent = rolled(spends, w, now)
    redis.call('HSET', K_SPEND, w.name, fmt(start) .. ' ' .. fmt(spent + cost))
    for _, v in ipairs({'', w.name, string.format('%.0f', spent),
                        string.format('%.0f', spent + cost)}) do
      charged[#charged + 1] = v
    end
  end
end
if cost ~= 0 and #KEYS > 5 then
  local scope_prefix = string.sub(K_LEASES, 1, -7) .. 'scope:'
  local i = 6
  for group in string.gmatch(ARGV[14] .. ';', '([^;]*);') do
    if i > #KEYS then break end
    local sws = {}
    for name in string.gmatch(group, '[^,]+') do
      sws[#sws + 1] = {name = name, length = WINDOW_LENGTH[name]}
    end
    scope_settle(KEYS[i], sws, cost, now, charged, string.sub(KEYS[i], #scope_prefix + 1))
    i = i + 1
  end
end
local key = ARGV[13]
if ARGV[15] ~= '' then
  local s = load_state(redis.call('HGET', K_SVC, key))
  local reserved, in_flight = 0, 0
  if needs_in_flight(s, ARGV[16], ARGV[19]) then
    reserved, in_flight = scan_leases(K_LEASES, now, key, nil, false)
  end
  s = observe(s, ARGV[15], ARGV[16], ARGV[17], now, in_flight, ARGV[18], ARGV[19])
  redis.call('HSET', K_SVC, key, dump_state(s))
end
if ARGV[10] == '1' then
  redis.call('HINCRBY', K_CTR, ctr_key('calls', service, model, status), 1)
  if attempts > 1 then redis.call('HINCRBY', K_CTR, ctr_key('retries', service), attempts - 1) end
else
  redis.call('HINCRBY', K_CTR, ctr_key('lost', service), 1)
end
if cost ~= 0 then
  redis.call('HINCRBY', K_CTR, ctr_key('cost', service, model), ARGV[8])
  if job ~= '' then redis.call('HINCRBY', K_CTR, ctr_key('job', job), ARGV[8]) end
end
if ARGV[11] ~= '0' then
  redis.call('HINCRBY', K_CTR, ctr_key('overrun', service, model), ARGV[11])
end
return charged
