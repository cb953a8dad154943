-- A connection check asks for one upstream call of its account's spare budget, on Redis's clock. Unlike a
-- flow it never queues: it is granted only while no flow of the account waits for budget (none queued,
-- none parked, no slot reserved for a released one), while the window keeps room for the flows beside
-- the checks' own share, and while checks have used less than their share of the rate and of the day.
-- A granted call counts in the account's window and its day like any other; budget_finished.lua ends it
-- in both windows (scored by its end, it leaves the checks' window `span` after that).
--
-- KEYS: 1 window zset, 2 alive zset (the queue's waiters, scored by when they last asked), 3 parked zset,
--       4 early slots zset, 5 the account's pause, 6 the checks' own window zset, 7 the check lock,
--       8 calls the flows under way still need (counter)
-- ARGV: 1 call id, 2 the check's fence, 3 limit, 4 period (s), 5 hold (s), 6 the checks' share (0..1],
--       7 calls a day or "", 8 the prefix of the day's counter, 9 the prefix of the checks' day counter
--       (the UTC day number is appended to both), 10 seconds after which a silent waiter is ignored
-- Returns {"granted", now} | {"wait", seconds} | {"paused", seconds} | {"spent", seconds to midnight}
--       | {"fenced", 0} (another check holds the account now)

local window, alive, parked, early = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pause, checks, lock, reserved = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local call_id = ARGV[1]
local limit, period, hold = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local share, daily_limit, stale = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[10])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

if redis.call("GET", lock) ~= ARGV[2] then
  return {"fenced", "0"}
end
local paused_until = tonumber(redis.call("GET", pause) or "0")
if paused_until > now then
  return {"paused", tostring(paused_until - now)}
end
-- a flow waiting for budget, in the queue or parked, has every slot: the check asks again shortly
if redis.call("ZCOUNT", alive, now - stale, "+inf") > 0 or redis.call("ZCARD", parked) > 0
    or redis.call("ZCOUNT", early, now, "+inf") > 0 then
  return {"wait", "0.2"}
end

-- the checks' share of the rate: `cap` calls per `span` seconds (one call per longer span when the
-- share is under one call a period)
local per_period = limit * share
local cap = math.max(1, math.floor(per_period))
local span = period * cap / per_period
redis.call("ZREMRANGEBYSCORE", checks, "-inf", now - span)
if redis.call("ZCARD", checks) >= cap then
  local oldest = redis.call("ZRANGE", checks, 0, 0, "WITHSCORES")
  return {"wait", tostring(math.max(0.01, tonumber(oldest[2]) + span - now))}
end
-- the window keeps room for the flows: a check takes a slot only while `cap` more would still fit (when
-- the checks' share is the whole rate, or the rate one call a period: while the window is empty)
redis.call("ZREMRANGEBYSCORE", window, "-inf", now - period)
if redis.call("ZCARD", window) + math.min(cap, limit - 1) >= limit then
  local oldest = redis.call("ZRANGE", window, 0, 0, "WITHSCORES")
  local frees = oldest[2] and math.min(tonumber(oldest[2]), now) + period - now or 0.05
  return {"wait", tostring(math.max(0.01, frees))}
end

local day = math.floor(now / 86400)
local to_midnight = (day + 1) * 86400 - now
local day_key, checks_day_key = ARGV[8] .. day, ARGV[9] .. day
if daily_limit then
  local used = tonumber(redis.call("GET", day_key) or "0")
  local needs = math.max(0, tonumber(redis.call("GET", reserved) or "0"))
  local checked = tonumber(redis.call("GET", checks_day_key) or "0")
  if checked >= math.floor(daily_limit * share) or used + needs + 1 > daily_limit then
    return {"spent", tostring(to_midnight)}
  end
end

redis.call("ZADD", window, now + hold, call_id)
redis.call("PEXPIRE", window, math.ceil((period + hold) * 1000) + 1000)
redis.call("ZADD", checks, now + hold, call_id)
redis.call("PEXPIRE", checks, math.ceil((span + hold) * 1000) + 1000)
for _, key in ipairs({day_key, checks_day_key}) do
  redis.call("INCR", key)
  redis.call("EXPIRE", key, math.ceil(to_midnight) + 86400)
end
return {"granted", tostring(now)}
