-- Charge the leases that expired (a live process's heartbeat runs it while budgets are set).
-- KEYS: leases, spend, ctr, done
-- ARGV: now override, windows
local now = clock(ARGV[1])
local reserved, in_flight, expired = scan_leases(KEYS[1], now, '', nil, true)
charge_expired(expired, read_windows(ARGV[2]), KEYS[2], KEYS[3], KEYS[4], now,
  string.sub(KEYS[1], 1, -7) .. 'scope:')
return #expired
