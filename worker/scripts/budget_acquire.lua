-- A caller asks the shared upstream budget for a slot, earliest priority first, on Redis's clock.
--
-- KEYS: 1 window zset (granted calls scored by their end, or their latest possible end while in flight)
--       2 queue zset (waiters scored by priority), 3 alive zset (waiters scored by when they last asked)
-- ARGV: 1 waiter id, 2 priority, 3 limit, 4 period (s), 5 hold (s: the longest the call can take),
--       6 seconds after which a silent waiter is dropped, 7 give up at (epoch seconds)
-- Returns {"granted", now} | {"wait", seconds to wait before asking again} | {"doomed", least wait}

local window, queue, alive = KEYS[1], KEYS[2], KEYS[3]
local waiter, priority = ARGV[1], tonumber(ARGV[2])
local limit, period, hold = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local stale, give_up_at = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

redis.call("ZREMRANGEBYSCORE", window, "-inf", now - period)
local gone = redis.call("ZRANGEBYSCORE", alive, "-inf", now - stale)
for _, member in ipairs(gone) do
  redis.call("ZREM", queue, member)
  redis.call("ZREM", alive, member)
end
redis.call("ZADD", queue, priority, waiter)
redis.call("ZADD", alive, now, waiter)

local free = limit - redis.call("ZCARD", window)
local rank = redis.call("ZRANK", queue, waiter)
if rank < free then
  redis.call("ZREM", queue, waiter)
  redis.call("ZREM", alive, waiter)
  redis.call("ZADD", window, now + hold, waiter)
  redis.call("PEXPIRE", window, math.ceil((period + hold) * 1000) + 1000)
  return {"granted", tostring(now)}
end
-- the earliest moment enough calls could leave the window for this waiter's place in the queue: a
-- finished call leaves one period after its end; one in flight (scored by the latest moment it can
-- end) might end now, so no sooner than a period from now. Optimistic on purpose: a flow is doomed
-- only when even that is too late, and it polls again then.
-- A waiter further back than the window holds waits a period more for each `limit` ahead of it.
local ahead = rank - free
local held = limit - free
local wait = 0.05
if held > 0 then
  local entry = redis.call("ZRANGE", window, ahead % held, ahead % held, "WITHSCORES")
  if entry[2] then
    wait = math.max(0.001, math.min(tonumber(entry[2]), now) + period - now)
  end
end
wait = wait + math.floor(ahead / limit) * period
if now + wait > give_up_at then
  redis.call("ZREM", queue, waiter)
  redis.call("ZREM", alive, waiter)
  return {"doomed", tostring(wait)}
end
redis.call("PEXPIRE", queue, math.ceil(stale * 1000) + 1000)
redis.call("PEXPIRE", alive, math.ceil(stale * 1000) + 1000)
return {"wait", tostring(wait)}
