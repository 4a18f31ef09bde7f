-- admission.decide plus the lease and the decision counter, in one step.
-- KEYS: svc, leases, spend, ctr, emergency, done, then one key per scope value
-- ARGV: now override, limit scope key, lease id ('' = none), ttl, reserve (1/0),
--       refuse in emergency (1/0), headroom share, LLM tokens, cost (nanos),
--       cost (float), windows, limits, emergency limits, service (counter label),
--       observe mode (1/0), then one scope spec per scope key (see read_scope)
-- Returns {admitted, outcome, retry_after, remaining nanos | '', window | '', emergency,
--          bound | '', scope | '', observed | '', sent}.
local K_SVC, K_LEASES, K_SPEND, K_CTR, K_EMERGENCY = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_DONE = KEYS[6]
local now = clock(ARGV[1])
local service, lease_id, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])  -- service: the scope key
local label = ARGV[14]
local reserve, refuse = ARGV[5] == '1', ARGV[6] == '1'
local share, llm_tokens = tonumber(ARGV[7]), tonumber(ARGV[8])
local cost_n, cost_f = tonumber(ARGV[9]), tonumber(ARGV[10])
local ws = read_windows(ARGV[11])
local observing = ARGV[15] == '1'
local emergency = redis.call('GET', K_EMERGENCY) == '1'
local scope_prefix = string.sub(K_LEASES, 1, -7) .. 'scope:'
local scopes, held_budgets = {}, false
for i = 16, #ARGV do
  local sc = read_scope(ARGV[i], KEYS[i - 9])
  scopes[#scopes + 1] = sc
  if #sc.ws > 0 then held_budgets = true end
end

local function count(outcome)
  redis.call('HINCRBY', K_CTR, ctr_key('requests', label, outcome), 1)
end

local observed = nil -- the first refusal of an observed scope

-- one count per admission: observed limits count the first refusal they would have
-- made (as would_...); an enforced scope's refusal is real
local function finish(admitted, outcome, wait, left, window, bound, scope, sent)
  local seen = nil
  if observed ~= nil and (admitted or (observing and not scope)) then seen = observed end
  if seen ~= nil then
    count('would_' .. seen)
  elseif admitted or not observing or scope then
    -- a rate_limited outcome is a wait, not a refusal: the governor counts it
    if outcome ~= 'rate_limited' then count(outcome) end
  else
    count('would_' .. outcome)
  end
  local left_s = ''
  if left ~= nil then left_s = string.format('%.0f', left) end
  return {admitted and 1 or 0, outcome, fmt(wait), left_s, window or '', emergency and 1 or 0,
    bound or '', scope or '', seen or '', sent or 0}
end

local lim
if emergency then lim = read_limits(ARGV[13]) else lim = read_limits(ARGV[12]) end
local reserved, in_flight, scope_reserved = 0, 0, {}
if reserve and (#ws > 0 or lim.max_conc ~= 0 or held_budgets) then -- only limits in force
  local expired
  reserved, in_flight, expired = scan_leases(K_LEASES, now, service, ttl, true,
    held_budgets and scope_reserved or nil)
  charge_expired(expired, ws, K_SPEND, K_CTR, K_DONE, now, scope_prefix)
  for _, sc in ipairs(scopes) do -- an expired lease may have charged one of them
    sc.state = load_scope(redis.call('GET', sc.rkey))
  end
end
-- the scopes' budgets first (scopes.check): an immediate refusal naming the scope
if reserve then
  for _, sc in ipairs(scopes) do
    if #sc.ws > 0 then
      local ok, left, window, reset = budget_check(sc.state.spends, sc.ws,
        scope_reserved[sc.key] or 0, cost_n, now)
      if not ok then
        if sc.observe then
          if observed == nil then observed = 'budget_exceeded' end
        else
          return finish(false, 'budget_exceeded', reset, left, window, nil, sc.key)
        end
      end
    end
  end
end
if emergency and refuse then return finish(false, 'emergency', 0.0) end
local s = load_state(redis.call('HGET', K_SVC, service))
local breaker_before = {s.b_state, s.b_fail, s.b_succ, s.opened_at, s.b_probes, s.b_probe_at}
local allowed, wait = breaker_allow(s, now, lim)
if not allowed then return finish(false, 'circuit_open', wait) end
local spends = load_spends(K_SPEND, ws)
if reserve and #ws > 0 then
  local ok, left, window, reset = budget_check(spends, ws, reserved, cost_n, now)
  if not ok then return finish(false, 'budget_exceeded', reset, left, window) end
end

-- the longest wait so far (-1 = none) and the limit behind it, as admission.decide
local longest, bound = -1.0, nil
if reserve and lim.max_conc ~= 0 and in_flight >= lim.max_conc then
  longest, bound = 0.05, 'concurrency' -- a slot frees on some settle; poll briefly
end
local cap, tok_cap = lim.capacity, lim.tpm
local req_rate, tok_rate
local dirty = false -- an instant brought back within its horizon: stored even on refusal
if s.a_rate == 0 and s.cap_until <= now and s.blocked_until <= now
    and s.learned_until <= now then
  req_rate, tok_rate = lim.ceiling, tok_cap / 60.0
else
  local bu, cu, lu, sa, ta, co = s.blocked_until, s.cap_until, s.learned_until, s.slowed_at,
    s.throttled_at, s.cold_until
  sane_adaptive(s, now, lim.max_block)
  if s.blocked_until ~= bu or s.cap_until ~= cu or s.learned_until ~= lu or s.slowed_at ~= sa
      or s.throttled_at ~= ta or s.cold_until ~= co then
    dirty = true
  end
  local blocked
  req_rate, tok_rate, blocked = effective_rates(s, now, lim.floor, lim.ceiling, tok_cap / 60.0)
  cap, tok_cap = capacities(s, now, cap, tok_cap)
  if tok_rate > 0 and tok_cap > 0 then tok_rate = math.max(tok_rate, tok_cap / lim.max_block) end
  if blocked > 0 and blocked > longest then longest, bound = blocked, 'provider' end
end
local req_tat, tok_tat, cost_tat = s.req_tat, s.tok_tat, s.cost_tat
if s.cold_until ~= 0 and now >= s.cold_until then -- a cold start's spread just ended
  s.cold_until, req_tat, dirty = 0.0, warmed(req_tat, now, cap, req_rate), true
end
-- the furthest a tat can legitimately be: an empty bucket now, or one token at a block's end
local horizon = math.max(now + cap / req_rate, s.blocked_until + math.max(0.0, cap - 1.0) / req_rate)
if req_tat > horizon then req_tat, dirty = horizon, true end
if cost_tat > now + 60.0 then cost_tat, dirty = now + 60.0, true end
local ok, w
local new_req, new_tok, new_cost
ok, new_req, w = gcra(req_tat, now, 1.0, req_rate, cap, headroom(cap, 1.0, share))
if not ok and w > longest then longest, bound = w, 'requests' end
if s.others > 0 then -- sharing the account: the scope's own part of the provider's window
  w = own_window_wait(s, now, lim.max_block)
  if w > longest then longest, bound = w, 'provider' end
end
new_tok = tok_tat
if tok_rate > 0 and llm_tokens > 0 and tok_cap > 0 then
  if tok_tat > now + tok_cap / tok_rate then tok_tat, dirty = now + tok_cap / tok_rate, true end
  local c = math.min(llm_tokens, tok_cap)
  ok, new_tok, w = gcra(tok_tat, now, c, tok_rate, tok_cap, headroom(tok_cap, c, share))
  if not ok and w > longest then longest, bound = w, 'llm_tokens' end
end
new_cost = cost_tat
if cost_n > 0 then
  local pacing = 1.0
  if #ws > 0 then pacing = pacing_factor(spends, ws, now) end
  local per_min = lim.cpm * pacing
  local c = math.min(cost_f, per_min)
  ok, new_cost, w = gcra(cost_tat, now, c, per_min / 60.0, per_min, headroom(per_min, c, share))
  if not ok and w > longest then longest, bound = w, 'cost' end
end
if longest >= 0 then
  if dirty then -- keep the correction, not what the refused call would have taken
    s.b_state, s.b_fail, s.b_succ, s.opened_at, s.b_probes, s.b_probe_at =
      unpack(breaker_before)
    s.req_tat, s.tok_tat, s.cost_tat = req_tat, tok_tat, cost_tat
    redis.call('HSET', K_SVC, service, dump_state(s))
  end
  return finish(false, 'rate_limited', longest, nil, nil, bound)
end

-- the service admits: now the scopes' buckets (scopes.take), all or nothing
if #scopes > 0 then
  local wait, waited_for, taken = -1.0, nil, {}
  for i, sc in ipairs(scopes) do
    local w, st = scope_take(sc, llm_tokens, now)
    if w >= 0 and sc.observe then
      if observed == nil then observed = 'rate_limited' end
    elseif w > wait then
      wait, waited_for = w, sc.key
    end
    taken[i] = st
  end
  if wait >= 0 then -- a scope's bucket holds the call: the service's take is undone
    for i, sc in ipairs(scopes) do
      if taken[i] ~= nil then store_scope(sc.rkey, taken[i], now) end -- clock corrections
    end
    return finish(false, 'rate_limited', wait, nil, nil, 'scope', waited_for)
  end
  for i, sc in ipairs(scopes) do
    local current = taken[i] or sc.state
    local kept = scope_hold(sc, current, now)
    if kept ~= nil then current = kept end
    if current ~= sc.state then store_scope(sc.rkey, current, now) end
  end
end

s.req_tat, s.tok_tat, s.cost_tat = new_req, new_tok, new_cost
s.sent = s.sent + 1
redis.call('HSET', K_SVC, service, dump_state(s))
if lease_id ~= '' then
  local value = fmt(now + ttl) .. ' ' .. ARGV[9] .. ' ' .. service
  local tail = {}
  for _, sc in ipairs(scopes) do
    if #sc.ws > 0 then tail[#tail + 1] = sc.key end
  end
  if #tail > 0 then value = value .. '\t' .. table.concat(tail, ' ') end
  redis.call('HSET', K_LEASES, lease_id, value)
end
return finish(true, 'admitted', 0.0, nil, nil, nil, nil, s.sent)
