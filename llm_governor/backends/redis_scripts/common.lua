-- Prelude of every llm-governor Redis script: a line-by-line port of the pure
-- policies in llm_governor/policies (rate.py, budget.py, breaker.py,
-- adaptive.py, admission.py). Keep the two in step: tests/backends/
-- test_differential.py demands identical decisions from both.
--
-- Numbers: floats cross the boundary as shortest-repr (Python) or '%.17g'
-- (Lua) strings, so both sides compute on the same IEEE doubles in the same
-- order and get the same bits. Money is integer nano-dollars (exact in a
-- double up to 2^53, about 9 million USD). $NAME placeholders are filled in
-- from the Python constants when the script is loaded, and one with code
-- generated from Python (the service-state codec, backends/records.py).
if redis.replicate_commands then redis.replicate_commands() end

local EPS = $EPS
local SUCCESS_RUN = $SUCCESS_RUN
local LEARNED_TTL = $LEARNED_TTL
local COLD_BURST = $COLD_BURST
local PACE = $PACE
local OTHERS_GAIN = $OTHERS_GAIN
local OTHERS_FLOOR = $OTHERS_FLOOR
local OTHERS_NOISE = $OTHERS_NOISE
local OTHERS_PACE = $OTHERS_PACE
local SHARE_STEPS = $SHARE_STEPS
local SHARE_KEEP = $SHARE_KEEP
local SHARE_TICK = $SHARE_TICK
local SHARE_EMPTY = $SHARE_EMPTY
local HEADROOM_CALLS = $HEADROOM_CALLS
local MAX_LIMIT = 1e12
local SCOPE_IDLE = $SCOPE_IDLE

local function fmt(x) return string.format('%.17g', x) end

-- A counter key: parts joined by '|', each with '%' -> '%25' and '|' -> '%7C'
-- (backends/schema.py, the one rule; tests/backends/test_schema.py compares them).
local function esc(part)
  return (string.gsub(string.gsub(part, '%%', '%%25'), '|', '%%7C'))
end

local function ctr_key(...)
  local parts = {...}
  for i = 1, #parts do parts[i] = esc(parts[i]) end
  return table.concat(parts, '|')
end

-- The server's clock; a non-empty override is used only by tests.
local function clock(override)
  if override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- budget._civil_from_days / _days_from_civil (H. Hinnant), integer arithmetic on doubles.
local function fdiv(a, b) return math.floor(a / b) end

local function civil_from_days(z)
  z = z + 719468
  local era
  if z >= 0 then era = fdiv(z, 146097) else era = fdiv(z - 146096, 146097) end
  local doe = z - era * 146097
  local yoe = fdiv(doe - fdiv(doe, 1460) + fdiv(doe, 36524) - fdiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + fdiv(yoe, 4) - fdiv(yoe, 100))
  local mp = fdiv(5 * doy + 2, 153)
  local month
  if mp < 10 then month = mp + 3 else month = mp - 9 end
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month
end

local function days_from_civil(year, month)
  if month <= 2 then year = year - 1 end
  local era
  if year >= 0 then era = fdiv(year, 400) else era = fdiv(year - 399, 400) end
  local yoe = year - era * 400
  local shift
  if month > 2 then shift = -3 else shift = 9 end
  local doy = fdiv(153 * (month + shift) + 2, 5)
  return era * 146097 + yoe * 365 + fdiv(yoe, 4) - fdiv(yoe, 100) + doy - 719468
end

-- budget.window_start of a calendar month (length 0).
local function month_start(now)
  local days = math.floor(now / 86400)
  if days * 86400 > now then days = days - 1 end -- Python's exact floor division
  local year, month = civil_from_days(days)
  return days_from_civil(year, month) * 86400.0
end

-- budget.window_end of the month starting at start.
local function month_end(start)
  local year, month = civil_from_days(fdiv(start, 86400))
  if month == 12 then year, month = year + 1, 1 else month = month + 1 end
  return days_from_civil(year, month) * 86400.0
end

-- budget.window_start: Python's exact float floor division, then times length.
local function window_start(length, now)
  if length == 0 then return month_start(now) end
  local q = math.floor(now / length)
  if q * length > now then q = q - 1 end
  return q * length
end

local function numbers(text)
  local out = {}
  for tok in string.gmatch(text, '%S+') do out[#out + 1] = tonumber(tok) end
  return out
end

-- Limits: one argument, eleven numbers (see _limits_arg in redis.py).
local function read_limits(text)
  local v = numbers(text)
  return {
    capacity = v[1], floor = v[2], ceiling = v[3], multiplier = v[4], tpm = v[5], cpm = v[6],
    max_conc = v[7], fth = v[8], sth = v[9], recovery = v[10], max_block = v[11],
  }
end

-- Budget windows: one argument, "name limit_nanos length_s" per window.
local function read_windows(text)
  local ws = {}
  for name, limit, length in string.gmatch(text, '(%S+) (%S+) (%S+)') do
    ws[#ws + 1] = {name = name, limit = tonumber(limit), length = tonumber(length)}
  end
  return ws
end

-- ServiceState: load_state(raw) and dump_state(s).
$STATE_CODEC

-- budget.py ---------------------------------------------------------------
local function load_spends(key, ws)
  local spends = {}
  if #ws == 0 then return spends end
  local names = {}
  for k, w in ipairs(ws) do names[k] = w.name end
  local raw = redis.call('HMGET', key, unpack(names))
  for k, w in ipairs(ws) do
    if raw[k] then
      local start, spent = string.match(raw[k], '^(%S+) (%S+)$')
      spends[w.name] = {tonumber(start), tonumber(spent)}
    end
  end
  return spends
end

-- budget.roll: (start, spent) of the window instance containing now (a later one kept).
local function rolled(spends, w, now)
  local start = window_start(w.length, now)
  local sp = spends[w.name]
  if sp and sp[1] >= start then return start, sp[2] end
  return start, 0
end

local function remaining(spends, ws, reserved, now)
  local best
  for _, w in ipairs(ws) do
    local _, spent = rolled(spends, w, now)
    local left = w.limit - spent - reserved
    if best == nil or left < best then best = left end
  end
  return best
end

-- budget.check: ok, remaining (refusals only), refusing window, seconds to reset.
local function budget_check(spends, ws, reserved, amount, now)
  for _, w in ipairs(ws) do
    local start, spent = rolled(spends, w, now)
    local left = w.limit - spent - reserved
    if amount > left then
      local tightest = remaining(spends, ws, reserved, now)
      if 0 > tightest then tightest = 0 end
      local ends = start + w.length
      if w.length == 0 then ends = month_end(start) end
      return false, tightest, w.name, ends - now
    end
  end
  return true
end

local function pacing_factor(spends, ws, now)
  for _, w in ipairs(ws) do
    if w.name == 'day' then
      if w.limit == 0 then return 1.0 end
      local _, spent = rolled(spends, w, now)
      local fraction = (w.limit - spent) / w.limit
      if fraction >= 0.5 then return 1.0 end
      return math.max(0.05, fraction / 0.5)
    end
  end
  return 1.0
end

-- rate.py -----------------------------------------------------------------
local function headroom(capacity, cost, share)
  if share == 0 then return 0.0 end
  return math.max(0.0, math.min(share * math.min(capacity, HEADROOM_CALLS * cost), capacity - cost))
end

local function gcra(tat, now, cost, rate, capacity, reserve)
  if cost > capacity then cost = capacity end
  local base = now
  if tat > now then base = tat end
  local new_tat = base + cost / rate
  local allow_at = new_tat - (capacity - reserve) / rate
  if allow_at <= now + EPS then return true, new_tat, 0.0 end
  return false, tat, allow_at - now
end

-- Live leases: reserved nanos in total and calls in flight for service. With
-- drop, expired leases are removed and returned ({id, nanos, service, scopes} each);
-- with max_ttl, an expiry further than max_ttl away (a clock stepped back) is
-- brought back to now + max_ttl. With held (a table), the nanos each scope value's
-- live leases hold are added to it. Value: "expires nanos service" then, when the
-- call holds scope budgets, a tab and their keys ("kind=value", space-separated).
local function scan_leases(key, now, service, max_ttl, drop, held)
  local raw = redis.call('HGETALL', key)
  local reserved, count, expired = 0, 0, {}
  for k = 1, #raw, 2 do
    local expires, amount, svc, tail = string.match(raw[k + 1], '^(%S+) (%S+) ([^\t]*)(.*)$')
    expires = tonumber(expires)
    if expires <= now then
      if drop then
        redis.call('HDEL', key, raw[k])
        expired[#expired + 1] = {raw[k], tonumber(amount), svc, tail}
      end
    else
      if max_ttl ~= nil and expires > now + max_ttl then
        redis.call('HSET', key, raw[k], fmt(now + max_ttl) .. ' ' .. amount .. ' ' .. svc .. tail)
      end
      reserved = reserved + tonumber(amount)
      if svc == service then count = count + 1 end
      if held ~= nil and tail ~= '' then
        for sk in string.gmatch(tail, '%S+') do held[sk] = (held[sk] or 0) + tonumber(amount) end
      end
    end
  end
  return reserved, count, expired
end

-- policies/scopes.py ------------------------------------------------------
-- A scope value's record, at key prefix .. "kind=value" with a TTL to its expiry:
-- "req_tat tok_tat expires" then "window start spent_nanos" per budget window.
local WINDOW_LENGTH = {minute = 60, hour = 3600, day = 86400, month = 0}

local function window_end(length, start)
  if length == 0 then return month_end(start) end
  return start + length
end

local function load_scope(raw)
  local s = {req_tat = 0.0, tok_tat = 0.0, expires = 0.0, spends = {}, names = {}}
  if not raw then return s end
  local v = {}
  for tok in string.gmatch(raw, '%S+') do v[#v + 1] = tok end
  s.req_tat, s.tok_tat, s.expires = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  for i = 4, #v, 3 do
    s.spends[v[i]] = {tonumber(v[i + 1]), tonumber(v[i + 2])}
    s.names[#s.names + 1] = v[i]
  end
  return s
end

local function store_scope(key, s, now)
  local parts = {fmt(s.req_tat), fmt(s.tok_tat), fmt(s.expires)}
  for _, name in ipairs(s.names) do
    local sp = s.spends[name]
    parts[#parts + 1] = name .. ' ' .. fmt(sp[1]) .. ' ' .. fmt(sp[2])
  end
  local ms = math.ceil((s.expires - now) * 1000)
  if ms < 1000 then ms = 1000 end
  redis.call('SET', key, table.concat(parts, ' '), 'PX', ms)
end

-- scopes.expires_at over the windows ws ({name, length} each).
local function scope_expires_at(s, ws, now)
  local out = math.max(now + SCOPE_IDLE, s.expires)
  for _, w in ipairs(ws) do
    out = math.max(out, window_end(w.length, window_start(w.length, now)))
  end
  return out
end

-- scopes.settle: charge nanos to the windows ws of the scope stored at key;
-- appends (window, spent before, spent after) per window to charged, if given.
local function scope_settle(key, ws, nanos, now, charged, label)
  local s = load_scope(redis.call('GET', key))
  for _, w in ipairs(ws) do
    local start, spent = rolled(s.spends, w, now)
    if s.spends[w.name] == nil then s.names[#s.names + 1] = w.name end
    s.spends[w.name] = {start, spent + nanos}
    if charged ~= nil then
      for _, v in ipairs({label, w.name, string.format('%.0f', spent),
                          string.format('%.0f', spent + nanos)}) do
        charged[#charged + 1] = v
      end
    end
  end
  s.expires = scope_expires_at(s, ws, now)
  store_scope(key, s, now)
end

-- The windows ({name, length}) a stored scope has spend in.
local function scope_windows(s)
  local ws = {}
  for _, name in ipairs(s.names) do ws[#ws + 1] = {name = name, length = WINDOW_LENGTH[name]} end
  return ws
end

-- One scope of a call, one argument: "kind=value observe rpm tpm" then
-- "window limit_nanos" per budget. Its state is loaded from key.
local function read_scope(text, key)
  local v = {}
  for tok in string.gmatch(text, '%S+') do v[#v + 1] = tok end
  local sc = {key = v[1], observe = v[2] == '1', rpm = tonumber(v[3]), tpm = tonumber(v[4]),
    ws = {}, rkey = key}
  for i = 5, #v, 2 do
    sc.ws[#sc.ws + 1] = {name = v[i], limit = tonumber(v[i + 1]), length = WINDOW_LENGTH[v[i]]}
  end
  sc.state = load_scope(redis.call('GET', key))
  return sc
end

-- scopes.take: (wait, new state or nil when unchanged); wait -1 when admitted.
local function scope_take(sc, llm_tokens, now)
  local s = sc.state
  local wait = -1.0
  local horizon = now + 60.0
  local req_tat, tok_tat = math.min(s.req_tat, horizon), math.min(s.tok_tat, horizon)
  local clamped = req_tat ~= s.req_tat or tok_tat ~= s.tok_tat
  local new_req, new_tok = req_tat, tok_tat
  local ok, w
  if sc.rpm > 0 then
    ok, new_req, w = gcra(req_tat, now, 1.0, sc.rpm / 60.0, sc.rpm, 0.0)
    if not ok then wait = math.max(wait, w) end
  end
  if sc.tpm > 0 and llm_tokens > 0 then
    ok, new_tok, w = gcra(tok_tat, now, math.min(llm_tokens, sc.tpm), sc.tpm / 60.0, sc.tpm, 0.0)
    if not ok then wait = math.max(wait, w) end
  end
  if wait >= 0 then
    if not clamped then return wait, nil end
    return wait, {req_tat = req_tat, tok_tat = tok_tat, expires = s.expires, spends = s.spends,
      names = s.names}
  end
  return wait, {req_tat = new_req, tok_tat = new_tok,
    expires = math.max(s.expires, now + SCOPE_IDLE), spends = s.spends, names = s.names}
end

-- scopes.hold: every budget window on record, kept long enough (nil: unchanged).
local function scope_hold(sc, s, now)
  if #sc.ws == 0 then return nil end
  local missing = false
  for _, w in ipairs(sc.ws) do
    if s.spends[w.name] == nil then missing = true end
  end
  if not missing and s.expires >= now + 60.0 then return nil end
  local spends, names = {}, {}
  for _, name in ipairs(s.names) do spends[name] = s.spends[name]; names[#names + 1] = name end
  for _, w in ipairs(sc.ws) do
    if spends[w.name] == nil then
      spends[w.name] = {window_start(w.length, now), 0}
      names[#names + 1] = w.name
    end
  end
  return {req_tat = s.req_tat, tok_tat = s.tok_tat, expires = scope_expires_at(s, sc.ws, now),
    spends = spends, names = names}
end

-- TransactionalBackend._charge_expired: each expired lease is charged its
-- reservation (its process died mid-call; the provider may have billed it),
-- to the global budget and to every scope it held.
local function charge_expired(expired, ws, k_spend, k_ctr, k_done, now, scope_prefix)
  for _, e in ipairs(expired) do
    local id, nanos, svc, tail = e[1], e[2], e[3], e[4]
    if #ws > 0 then
      local spends = load_spends(k_spend, ws)
      for _, w in ipairs(ws) do
        local start, spent = rolled(spends, w, now)
        redis.call('HSET', k_spend, w.name, fmt(start) .. ' ' .. fmt(spent + nanos))
      end
    end
    for sk in string.gmatch(tail, '%S+') do
      local key = scope_prefix .. sk
      scope_settle(key, scope_windows(load_scope(redis.call('GET', key))), nanos, now)
    end
    local service = string.match(svc, '^[^/]*')
    redis.call('HINCRBY', k_ctr, ctr_key('expired', service), 1)
    if nanos ~= 0 then
      redis.call('HINCRBY', k_ctr, ctr_key('cost', service, '(expired)'),
        string.format('%.0f', nanos))
    end
    redis.call('ZADD', k_done, now + 3600, id)
  end
end

-- adaptive.py -------------------------------------------------------------
local function finite_positive(x) return x ~= nil and x > 0 and x < math.huge end
local function count_ok(x) return x ~= nil and x >= 0 and x <= MAX_LIMIT end

-- adaptive.sane: stored instants within their horizon of now.
local function sane_adaptive(s, now, max_block)
  s.blocked_until = math.min(s.blocked_until, now + max_block)
  s.cap_until = math.min(s.cap_until, now + max_block)
  s.learned_until = math.min(s.learned_until, now + LEARNED_TTL)
  s.slowed_at = math.min(s.slowed_at, now)
  s.throttled_at = math.min(s.throttled_at, now)
  s.cold_until = math.min(s.cold_until, now + max_block)
end

local function effective_rates(s, now, floor, ceiling, token_rate)
  local rate = ceiling
  if s.a_rate > 0 then rate = s.a_rate end
  local tokens = token_rate
  if now < s.cap_until then
    if s.req_cap > 0 then rate = math.min(rate, math.max(s.req_cap, floor)) end
    if s.tok_cap > 0 then
      if tokens > 0 then tokens = math.min(tokens, s.tok_cap) else tokens = s.tok_cap end
    end
  end
  local blocked = 0.0
  if s.blocked_until > now then blocked = s.blocked_until - now end
  return math.max(math.min(rate, ceiling), floor), tokens, blocked
end

local function capacities(s, now, capacity, tok_capacity)
  if now >= s.learned_until then return capacity, tok_capacity end
  if s.req_limit > 0 then capacity = math.min(capacity, s.req_limit) end
  if s.tok_limit > 0 then
    if tok_capacity > 0 then
      tok_capacity = math.min(tok_capacity, s.tok_limit)
    else
      tok_capacity = s.tok_limit
    end
  end
  if now < s.cold_until then capacity = math.min(capacity, COLD_BURST) end -- a cold start
  return capacity, tok_capacity
end

-- adaptive.ceiling_in_force: the configured ceiling, or the provider's rate while in force.
local function ceiling_in_force(s, now, floor, ceiling)
  if now < s.cap_until and s.req_cap > 0 then return math.min(ceiling, math.max(s.req_cap, floor)) end
  return ceiling
end

-- adaptive._theirs: others' calls in a provider's count, 0 within the noise of its limit.
local function theirs(others, limit)
  if others > math.max(OTHERS_FLOOR * limit, OTHERS_NOISE) then return others end
  return 0.0
end

-- adaptive.others_in_force
local function others_in_force(s, now)
  if now < s.cap_until then return theirs(s.others, s.req_limit) end
  return 0.0
end

-- adaptive.on_throttled: ceiling is the rate in force, sent the attempt's send time,
-- window the provider's reset (nil: none).
local function on_throttled(s, now, lim, retry_after, ceiling, sent, window)
  local blocked = s.blocked_until
  if finite_positive(retry_after) then
    blocked = math.max(blocked, now + math.min(retry_after, lim.max_block))
  end
  local span = 0.0
  if finite_positive(window) then span = math.min(window, lim.max_block) end
  local answered = s.slowed_at > 0 and (sent < s.slowed_at or now < s.slowed_at + span)
  local repeated = span == 0 or (s.throttled_at > 0 and now < s.throttled_at + span
    and sent >= s.blocked_until)
  -- others' calls in the provider's count already set the rate: this 429 was timing
  if not answered and repeated and others_in_force(s, now) <= 0 then
    local current = ceiling
    if s.a_rate > 0 then current = math.min(s.a_rate, ceiling) end
    s.a_rate = math.max(lim.floor, current / lim.multiplier)
    s.slowed_at = now
  end
  s.a_succ = 0
  s.blocked_until = blocked
  s.throttled_at = now
end

local function on_success(s, ceiling)
  if s.a_rate <= 0 or s.a_rate >= ceiling then
    s.a_succ = 0
  elseif s.a_succ + 1 < SUCCESS_RUN then
    s.a_succ = s.a_succ + 1
  else
    s.a_rate = math.min(ceiling, s.a_rate + ceiling / 10)
    s.a_succ = 0
  end
end

-- adaptive.provider_rate: the provider's refill rate per second, or nil.
local function provider_rate(limit, remaining, reset)
  if not count_ok(remaining) or not finite_positive(reset) then return nil end
  if count_ok(limit) and limit >= 1 then return limit / reset end
  return math.max(remaining, 1.0) / reset
end

-- adaptive._cold: the first report of a scope nothing was learned of, half its limit
-- left, its reset ahead?
local function is_cold(s, p, now, left, cold_until)
  return (s.req_limit <= 0 or now >= s.learned_until) and count_ok(p.limit_requests)
    and p.limit_requests >= 1 and 2 * left >= p.limit_requests and cold_until > now
end

-- uncounted: calls sent since the provider counted this one; age: seconds since it was sent
-- others: other clients' calls in the provider's count (nil: unknown)
local function on_provider_limits(s, p, now, lim, uncounted, age, others)
  local req_rate = provider_rate(p.limit_requests, p.remaining_requests, p.reset_requests)
  if req_rate ~= nil then
    local reset = math.min(p.reset_requests, lim.max_block)
    local left = 0.0
    if p.remaining_requests ~= nil then left = p.remaining_requests - uncounted end
    if now < s.cold_until then -- what is left, spread over the rest of the cold window
      s.req_cap = math.min(req_rate, math.max(left, 1.0) / (s.cold_until - now))
    elseif is_cold(s, p, now, left, now - age + reset) then -- its reset runs from its count
      s.cold_until = now - age + reset
      s.req_cap = math.min(req_rate, left / (s.cold_until - now))
    else
      if others ~= nil and others == others and others > -math.huge and others < math.huge then
        local kept = 0.0
        if now < s.cap_until then kept = s.others end
        s.others, s.window = kept + (others - kept) * OTHERS_GAIN, reset
      end
      local share = 1.0 -- of the provider's rate: what others' calls leave us
      if count_ok(p.limit_requests) and p.limit_requests >= 1 then
        share = share - math.min(1.0 - OTHERS_FLOOR,
          theirs(s.others, p.limit_requests) / p.limit_requests)
      end
      if share >= 1.0 then s.req_cap = req_rate * share * PACE
      else s.req_cap = req_rate * share * OTHERS_PACE end
    end
    s.cap_until = math.max(s.cap_until, now + reset)
  end
  local tok_rate = provider_rate(p.limit_tokens, p.remaining_tokens, p.reset_tokens)
  if tok_rate ~= nil then
    s.tok_cap = tok_rate
    s.cap_until = math.max(s.cap_until, now + math.min(p.reset_tokens, lim.max_block))
  end
  local learned_req, learned_tok = nil, nil
  if count_ok(p.limit_requests) and p.limit_requests >= 1 then learned_req = p.limit_requests end
  if count_ok(p.limit_tokens) and p.limit_tokens >= 1 then learned_tok = p.limit_tokens end
  if learned_req ~= nil or learned_tok ~= nil then
    if learned_req ~= nil then s.req_limit = learned_req end
    if learned_tok ~= nil then s.tok_limit = learned_tok end
    s.learned_until = now + LEARNED_TTL
  end
end

-- breaker.py --------------------------------------------------------------
local function breaker_reset(s)
  s.b_state, s.b_fail, s.b_succ, s.opened_at, s.b_probes, s.b_probe_at = 'closed', 0, 0, 0.0,
    0, 0.0
end

-- breaker.allow: allowed?, retry_after; changes s in place (kept only when admitted).
local function breaker_allow(s, now, lim)
  if s.b_state == 'closed' then return true, 0.0 end
  if s.b_state == 'open' then
    local reopen_at = math.min(s.opened_at, now) + lim.recovery
    if now < reopen_at then return false, reopen_at - now end
    s.b_state, s.b_fail, s.b_succ, s.b_probes, s.b_probe_at = 'half_open', 0, 0, 0, 0.0
  end
  local probe_at = math.min(s.b_probe_at, now)
  local probes = s.b_probes
  if now - probe_at >= lim.recovery then probes = 0 end
  if probes >= lim.sth then return false, probe_at + lim.recovery - now end
  s.b_probes, s.b_probe_at = probes + 1, now
  return true, 0.0
end

local function breaker_record(s, success, now, lim)
  if success then
    if s.b_state == 'half_open' then
      if s.b_succ + 1 >= lim.sth then
        breaker_reset(s)
      else
        s.b_succ = s.b_succ + 1
        s.b_probes = math.max(0, s.b_probes - 1)
      end
    elseif s.b_state ~= 'open' and s.b_fail ~= 0 then
      breaker_reset(s)
    end
  elseif s.b_state == 'half_open' then
    s.b_state, s.b_fail, s.b_succ, s.opened_at, s.b_probes, s.b_probe_at = 'open', lim.fth, 0,
      now, 0, 0.0
  elseif s.b_state ~= 'open' then
    local failures = s.b_fail + 1
    if failures >= lim.fth then
      s.b_state, s.b_fail, s.b_succ, s.opened_at, s.b_probes, s.b_probe_at = 'open', failures,
        0, now, 0, 0.0
    else
      s.b_fail = failures
    end
  end
end

-- admission._refilled: what the provider refilled in age seconds, at its own drain rate.
local function refilled(limit, remaining, reset, age)
  if limit == nil or remaining == nil or reset == nil
      or not (remaining >= 0 and remaining <= limit and limit <= MAX_LIMIT)
      or not (reset > 0 and reset < math.huge) then
    return 0.0
  end
  return age * (limit - remaining) / reset
end

-- admission._warmed: the request bucket's tat once a cold start's spread ends.
local function warmed(tat, now, capacity, rate)
  return math.max(tat, now) + math.max(0.0, capacity - COLD_BURST) / rate
end

-- admission._level: a tat holding at most remaining + credit - in_flight of capacity.
local function level(tat, now, capacity, rate, remaining, in_flight, credit)
  if remaining == nil or not (remaining >= 0 and remaining <= capacity) then return tat end
  local available = math.min(capacity, math.max(0.0, remaining + credit - in_flight))
  return math.max(tat, now + (capacity - available) / rate)
end

-- share.py ----------------------------------------------------------------
-- The scope's admission counter's snapshots: a list of {instant, count}, oldest first.
local function share_parse(text)
  local points = {}
  if text == nil or text == '' or text == SHARE_EMPTY then return points end
  for pair in string.gmatch(text, '[^;]+') do
    local t, n = string.match(pair, '^([^:]+):([^:]+)$')
    t, n = tonumber(t), tonumber(n)
    if t == nil or n == nil or t ~= t or t == math.huge or t == -math.huge then return {} end
    points[#points + 1] = {t, n}
  end
  return points
end

local function share_dump(points)
  if #points == 0 then return SHARE_EMPTY end
  local parts = {}
  for i, pt in ipairs(points) do parts[i] = string.format('%.17g:%d', pt[1], pt[2]) end
  return table.concat(parts, ';')
end

-- share.mark: the snapshots after a report (changed: returns a new list).
local function share_mark(points, now, sent, counted_at, window)
  if not (window > 0 and window < math.huge) then return points end
  local last = points[#points]
  if last == nil or last[1] > now or counted_at - last[1] > 2 * window then
    local old = 0
    if last ~= nil then old = math.min(last[2], sent) end
    return {{counted_at, old}, {now, sent}}
  end
  if now - last[1] < window / SHARE_STEPS then return points end
  local n = #points + 1 -- the points with {now, sent} appended
  local start = 1
  while start + 1 < n and points[start + 1][1] <= counted_at - window do
    start = start + 1
  end
  local out = {}
  for i = math.max(start, n - SHARE_KEEP + 1), #points do out[#out + 1] = points[i] end
  out[#out + 1] = {now, sent}
  return out
end

-- share.sent_at: the counter at `when`, linear between snapshots and {now, sent}.
local function share_sent_at(points, when, now, sent)
  if when >= now then return sent end
  local t0, n0 = now, sent
  if #points > 0 then t0, n0 = points[1][1], points[1][2] end
  if when <= t0 then return n0 end
  for i = 2, #points + 1 do
    local t1, n1 = now, sent
    if i <= #points then t1, n1 = points[i][1], points[i][2] end
    if when <= t1 then
      if t1 > t0 then return n0 + (n1 - n0) * (when - t0) / (t1 - t0) end
      return n1
    end
    t0, n0 = t1, n1
  end
  return sent
end

-- share.reached: when the counter reached `count` (-inf: before the snapshots).
local function share_reached(points, count, now, sent)
  local t0, n0 = now, sent
  if #points > 0 then t0, n0 = points[1][1], points[1][2] end
  if count <= n0 then return -math.huge end
  if count > sent then return math.huge end
  for i = 2, #points + 1 do
    local t1, n1 = now, sent
    if i <= #points then t1, n1 = points[i][1], points[i][2] end
    if count <= n1 then return t0 + (t1 - t0) * (count - n0) / (n1 - n0) end
    t0, n0 = t1, n1
  end
  return now
end

-- share.stepped: the attempt-th admission placed at `at` exactly (changed: a new list).
local function share_stepped(points, at, attempt)
  if #points == 0 or #points > SHARE_KEEP - SHARE_STEPS - 4 then return points end
  local i = #points + 1 -- the first point after `at`
  while i > 1 and points[i - 1][1] > at do i = i - 1 end
  if i == 1 or (i <= #points and points[i][2] < attempt) then return points end
  local t0, n0 = points[i - 1][1], points[i - 1][2]
  local out = {}
  if t0 >= at - SHARE_TICK then -- a step at this instant already: one more call in it
    if n0 ~= attempt - 1 or i <= 2 then return points end
    for j = 1, #points do
      if j == i - 1 then out[j] = {t0, attempt} else out[j] = points[j] end
    end
    return out
  end
  if n0 > attempt - 1 then return points end
  for j = 1, i - 1 do out[#out + 1] = points[j] end
  out[#out + 1] = {at - SHARE_TICK, attempt - 1}
  out[#out + 1] = {at, attempt}
  for j = i, #points do out[#out + 1] = points[j] end
  return out
end

-- share.refused: the attempt-th admission taken back out of the window from `since`
-- (changed: a new list).
local function share_refused(points, attempt, since)
  local out = {}
  for i, pt in ipairs(points) do
    if pt[2] < attempt and pt[1] >= since then out[i] = {pt[1], pt[2] + 1} else out[i] = pt end
  end
  return out
end

-- share.others: others' calls in the provider's count, 0 without sane headers.
local function share_others(limit, remaining, ours)
  if limit == nil or remaining == nil
      or not (remaining >= 0 and remaining <= limit and limit <= MAX_LIMIT) then
    return 0.0
  end
  return math.max(0.0, limit - remaining - ours)
end

-- adaptive.own_part: the calls of each provider window left to the scope (0: no others).
local function own_part(s, now)
  local t = others_in_force(s, now)
  if t <= 0 or s.window <= 0 or s.req_limit < 1 then return 0 end
  return math.max(1, math.floor(s.req_limit - t + 0.5))
end

-- admission._own_window_wait: -1, or the wait for the scope's oldest call in its part of
-- the provider's window to expire.
local function own_window_wait(s, now, max_block)
  local part = own_part(s, now)
  if part <= 0 then return -1.0 end
  local points = share_parse(s.sends)
  local window = math.min(s.window, max_block)
  if #points == 0 or s.sent - share_sent_at(points, now - window, now, s.sent) < part then
    return -1.0
  end
  local due = share_reached(points, s.sent + 1 - part, now, s.sent) + window
  if now < due and due < math.huge then return due - now end
  return -1.0
end

-- admission.observe's uncounted: the scope's attempts admitted after this one (the
-- provider's count cannot include them), else its calls in flight.
local function uncounted_since(s, sent_arg, in_flight)
  local sent = tonumber(sent_arg) or 0
  if sent > 0 and sent <= s.sent then return s.sent - sent end
  return in_flight or 0
end

-- backends.base._in_flight's test: the leases need a scan only for provider limits
-- whose attempt's sent count cannot tell what the provider has not counted.
local function needs_in_flight(s, provider, sent_arg)
  if provider == '- - - - - - -' then return false end
  local sent = tonumber(sent_arg) or 0
  return not (sent > 0 and sent <= s.sent)
end

-- admission.observe: outcome, provider limits (7 numbers, '-' for none), limits,
-- the observation's age and its attempt's sent count, one argument each.
-- in_flight: the scope's calls in flight (needed only when sent_arg cannot say what
-- the provider has not counted: see uncounted). Changes the state in place and
-- returns it.
local function observe(s, outcome, provider, limits, now, in_flight, age_arg, sent_arg)
  local v = {}
  local k = 0
  for tok in string.gmatch(provider, '%S+') do k = k + 1; v[k] = tonumber(tok) end
  local p = {
    limit_requests = v[1], remaining_requests = v[2], reset_requests = v[3],
    limit_tokens = v[4], remaining_tokens = v[5], reset_tokens = v[6], retry_after = v[7],
  }
  local lim = read_limits(limits)
  -- admission._age: 0 unless positive and finite, at most max_block
  local age = tonumber(age_arg) or 0.0
  if age > 0 and age < math.huge then age = math.min(age, lim.max_block) else age = 0.0 end
  local minute = window_start(60, now)
  if minute ~= s.minute then
    if minute - s.minute == 60.0 then
      s.prev_ok, s.prev_failed = s.ok, s.failed
    else
      s.prev_ok, s.prev_failed = 0, 0
    end
    s.minute, s.ok, s.failed = minute, 0, 0
  end
  if outcome == 'success' then
    s.ok = s.ok + 1
    breaker_record(s, true, now, lim)
    on_success(s, ceiling_in_force(s, now, lim.floor, lim.ceiling))
  elseif outcome == 'failure' then
    s.failed = s.failed + 1
    breaker_record(s, false, now, lim)
  elseif outcome == 'throttled' then
    sane_adaptive(s, now, lim.max_block)
    local sent = now - age
    on_throttled(s, now, lim, p.retry_after, ceiling_in_force(s, now, lim.floor, lim.ceiling),
      sent, p.reset_requests)
  end
  if k == 0 or provider == '- - - - - - -' then return s end
  local uncounted = uncounted_since(s, sent_arg, in_flight)
  -- ours against others' in the provider's count (share.py): a window back from when
  -- the provider counted this attempt, the scope's admissions then
  local marks, others, window = nil, nil, p.reset_requests
  local at = now - age
  local obs_sent = tonumber(sent_arg) or 0
  if obs_sent > 0 and obs_sent <= s.sent and window ~= nil and window > 0
      and window <= lim.max_block then -- a sane window
    local parsed = share_parse(s.sends)
    marks = share_mark(parsed, now, s.sent, at, window)
    if outcome == 'throttled' then
      marks = share_refused(marks, obs_sent, at - window)
    elseif others_in_force(s, now) > 0 then
      marks = share_stepped(marks, at, obs_sent)
    end
    if marks ~= parsed then s.sends = share_dump(marks) end
    others = share_others(p.limit_requests, p.remaining_requests,
      obs_sent - share_sent_at(marks, at - window, now, s.sent))
  end
  sane_adaptive(s, now, lim.max_block)
  on_provider_limits(s, p, now, lim, uncounted, age, others)
  local req_rate, tok_rate = effective_rates(s, now, lim.floor, lim.ceiling, lim.tpm / 60.0)
  local cap, tok_cap = capacities(s, now, lim.capacity, lim.tpm)
  if tok_rate > 0 and tok_cap > 0 then tok_rate = math.max(tok_rate, tok_cap / lim.max_block) end
  if s.cold_until ~= 0 and now >= s.cold_until then
    s.cold_until, s.req_tat = 0.0, warmed(s.req_tat, now, cap, req_rate)
  end
  -- what the provider freed meanwhile: nothing of a window filled from cold before it
  -- turns; of a window others share, our own calls of a window ago (they take theirs)
  local credit = 0.0
  local credit_own = others ~= nil and others_in_force(s, now) > 0
  if age > 0 and now >= s.cold_until then
    if credit_own then
      credit = share_sent_at(marks, now - window, now, s.sent)
        - share_sent_at(marks, at - window, now, s.sent)
    else
      credit = refilled(p.limit_requests, p.remaining_requests, p.reset_requests, age)
    end
  end
  s.req_tat = level(s.req_tat, now, cap, req_rate, p.remaining_requests, uncounted, credit)
  if credit_own and count_ok(p.remaining_requests) then
    local free = p.remaining_requests + credit - uncounted -- the provider's, for us
    if free < 1.0 then -- nothing frees for us before our next call expires
      local due = share_reached(marks, share_sent_at(marks, now - window, now, s.sent)
        + 1.0 - math.max(free, 0.0), now, s.sent) + window
      if s.blocked_until < due and due < math.huge then s.blocked_until = due end
    end
  end
  if s.blocked_until > now then -- a block empties the bucket: nothing refills before its end
    s.req_tat = math.max(s.req_tat, s.blocked_until + math.max(0.0, cap - 1.0) / req_rate)
  end
  if tok_rate > 0 and tok_cap > 0 then
    s.tok_tat = level(s.tok_tat, now, tok_cap, tok_rate, p.remaining_tokens, 0, 0.0)
  end
  return s
end
