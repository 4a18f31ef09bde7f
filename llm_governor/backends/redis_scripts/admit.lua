-- admission.decide plus the lease and the decision counter, in one step.
-- KEYS: svc, leases, spend, ctr, emergency
-- ARGV: now override, service, lease id ('' = none), ttl, reserve (1/0),
--       refuse in emergency (1/0), headroom share, LLM tokens, cost (nanos),
--       cost (float), windows, limits, emergency limits
-- Returns {admitted, outcome, retry_after, remaining nanos | '', window | '', emergency}.
local K_SVC, K_LEASES, K_SPEND, K_CTR, K_EMERGENCY = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = clock(ARGV[1])
local service, lease_id, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local reserve, refuse = ARGV[5] == '1', ARGV[6] == '1'
local share, llm_tokens = tonumber(ARGV[7]), tonumber(ARGV[8])
local cost_n, cost_f = tonumber(ARGV[9]), tonumber(ARGV[10])
local ws = read_windows(ARGV[11])
local emergency = redis.call('GET', K_EMERGENCY) == '1'

local function finish(admitted, outcome, wait, left, window)
  redis.call('HINCRBY', K_CTR, 'requests|' .. service .. '|' .. outcome, 1)
  local left_s = ''
  if left ~= nil then left_s = string.format('%.0f', left) end
  return {admitted and 1 or 0, outcome, fmt(wait), left_s, window or '', emergency and 1 or 0}
end

local lim
if emergency then
  if refuse then return finish(false, 'emergency', 0.0) end
  lim = read_limits(ARGV[13])
else
  lim = read_limits(ARGV[12])
end
local s = load_state(redis.call('HGET', K_SVC, service))
if s.b_state == 'open' then
  local reopen_at = s.opened_at + lim.recovery
  if now < reopen_at then return finish(false, 'circuit_open', reopen_at - now) end
  s.b_state, s.b_fail, s.b_succ = 'half_open', 0, 0
end
local reserved, in_flight = 0, 0
if reserve then reserved, in_flight = scan_leases(K_LEASES, now, service) end
local spends = load_spends(K_SPEND, ws)
if reserve and #ws > 0 then
  local ok, left, window, reset = budget_check(spends, ws, reserved, cost_n, now)
  if not ok then return finish(false, 'budget_exceeded', reset, left, window) end
end

local waits = {}
if reserve and lim.max_conc ~= 0 and in_flight >= lim.max_conc then
  waits[#waits + 1] = 0.05 -- a slot frees on some settle; poll briefly
end
local req_rate, tok_rate, blocked = effective_rates(s, now, lim.floor, lim.ceiling, lim.tpm / 60.0)
if blocked > 0 then waits[#waits + 1] = blocked end
local ok, w
local req_tat, tok_tat, cost_tat = s.req_tat, s.tok_tat, s.cost_tat
ok, req_tat, w = gcra(s.req_tat, now, 1.0, req_rate, lim.capacity,
  headroom(lim.capacity - 1.0, 0.0, share))
if not ok then waits[#waits + 1] = w end
if tok_rate > 0 and llm_tokens > 0 then
  local cap = lim.tpm
  local c = math.min(llm_tokens, cap)
  ok, tok_tat, w = gcra(s.tok_tat, now, c, tok_rate, cap, headroom(cap, c, share))
  if not ok then waits[#waits + 1] = w end
end
if cost_n > 0 then
  local pacing = 1.0
  if #ws > 0 then pacing = pacing_factor(spends, ws, now) end
  local per_min = lim.cpm * pacing
  local c = math.min(cost_f, per_min)
  ok, cost_tat, w = gcra(s.cost_tat, now, c, per_min / 60.0, per_min, headroom(per_min, c, share))
  if not ok then waits[#waits + 1] = w end
end
if #waits > 0 then
  local longest = waits[1]
  for k = 2, #waits do if waits[k] > longest then longest = waits[k] end end
  return finish(false, 'rate_limited', longest)
end

s.req_tat, s.tok_tat, s.cost_tat = req_tat, tok_tat, cost_tat
redis.call('HSET', K_SVC, service, dump_state(s))
if lease_id ~= '' then
  redis.call('HSET', K_LEASES, lease_id, fmt(now + ttl) .. ' ' .. ARGV[9] .. ' ' .. service)
end
return finish(true, 'admitted', 0.0)
