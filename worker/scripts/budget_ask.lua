-- The budget's ask (budget_acquire.lua documents its KEYS, ARGV and answers) as a function, so that a
-- step that asks in the same call as something else (take_work.lua) makes exactly the same decision.
-- `now`, when given, is that step's own reading of Redis's TIME in the same call (the same instant).

local function budget_ask(KEYS, ARGV, now)
  local window, queue, alive = KEYS[1], KEYS[2], KEYS[3]
  local pause, reserved, admissions, parked = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
  local waiter, priority = ARGV[1], tonumber(ARGV[2])
  local limit, period, hold = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local stale, give_up_at = tonumber(ARGV[6]), tonumber(ARGV[7])
  local daily_limit, admission = tonumber(ARGV[8]), ARGV[10]
  if not now then
    local t = redis.call("TIME")
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end

  local function leave()
    redis.call("ZREM", queue, waiter)
    redis.call("ZREM", alive, waiter)
  end

  -- the window's key lives until its latest call stops counting (its score plus a period), and a grant
  -- never shortens that: a short hold granted last must not make a long call in flight forgotten
  local function keep_window()
    local last = redis.call("ZRANGE", window, -1, -1, "WITHSCORES")
    local ms = math.ceil((tonumber(last[2] or now) + period - now) * 1000) + 1000
    if redis.call("PTTL", window) < ms then
      redis.call("PEXPIRE", window, ms)
    end
  end

  -- admissions whose flow was never created (its shim died mid Step 1) give their reservation back
  for _, member in ipairs(redis.call("ZRANGEBYSCORE", admissions, "-inf", now, "LIMIT", 0, 16)) do
    redis.call("ZREM", admissions, member)
    redis.call("DECRBY", reserved, tonumber(string.match(member, "^(%d+):")))
  end

  redis.call("ZREMRANGEBYSCORE", window, "-inf", now - period)
  local gone = redis.call("ZRANGEBYSCORE", alive, "-inf", now - stale)
  for _, member in ipairs(gone) do
    redis.call("ZREM", queue, member)
    redis.call("ZREM", alive, member)
  end

  -- paused: a caller whose give-up time comes first is told so at once, and so is a new flow's Step 1
  -- (an admission) however soon the pause ends: new flows get 503 while the account is paused
  local paused_until = tonumber(redis.call("GET", pause) or "0")
  if paused_until > now and (give_up_at < paused_until or admission ~= "") then
    leave()
    return {"paused", tostring(paused_until - now)}
  end

  local slot = ARGV[12]
  if slot ~= "" and paused_until <= now and redis.call("ZSCORE", window, slot) then
    -- a slot reserved before it freed is used no sooner than that moment, the end of its name
    local frees_at = tonumber(string.match(slot, ":([%d%.]+)$")) or 0
    if frees_at > now then
      return {"reserved", tostring(frees_at - now)}
    end
    redis.call("ZREM", window, slot)
    leave()
    redis.call("ZADD", window, now + hold, waiter)
    keep_window()
    return {"granted", tostring(now)}
  end

  local day = math.floor(now / 86400)
  local day_key = ARGV[9] .. day
  local to_midnight = (day + 1) * 86400 - now
  local used = tonumber(redis.call("GET", day_key) or "0")
  local new_flow = admission ~= "" and not redis.call("ZSCORE", admissions, admission)
  if daily_limit then
    local short = used >= daily_limit
    if new_flow then
      -- a new flow is admitted only if the day still covers what the flows under way need, and its own
      local needs = math.max(0, tonumber(redis.call("GET", reserved) or "0"))
      short = daily_limit - used - needs < 1 + tonumber(string.match(admission, "^(%d+):"))
    end
    if short and (new_flow or give_up_at < now + to_midnight) then
      leave()
      return {"spent", tostring(to_midnight)}
    end
    if short then
      paused_until = math.max(paused_until, now + to_midnight)
    end
  end

  local function grant()
    redis.call("ZADD", window, now + hold, waiter)
    keep_window()
    redis.call("INCR", day_key)
    redis.call("EXPIRE", day_key, math.ceil(to_midnight) + 86400)
    if new_flow then
      redis.call("ZADD", admissions, now + tonumber(ARGV[11]), admission)
      redis.call("INCRBY", reserved, tonumber(string.match(admission, "^(%d+):")))
    end
    return {"granted", tostring(now)}
  end

  local free, parked_ahead
  if paused_until <= now and redis.call("ZCARD", queue) == 0 then
    -- no one waits (this waiter neither): its rank would be the parked flows' ahead of it, as below,
    -- and a grant needs no place in the queue
    free = limit - redis.call("ZCARD", window)
    parked_ahead = redis.call("ZCOUNT", parked, "-inf", "(" .. ARGV[2])
    if parked_ahead < free then
      return grant()
    end
  end

  redis.call("ZADD", queue, priority, waiter)
  redis.call("ZADD", alive, now, waiter)
  if paused_until > now then
    -- keeps its place in the queue and asks again (at least every second) until the pause ends
    redis.call("PEXPIRE", queue, math.ceil(stale * 1000) + 1000)
    redis.call("PEXPIRE", alive, math.ceil(stale * 1000) + 1000)
    return {"wait", tostring(paused_until - now)}
  end

  free = free or limit - redis.call("ZCARD", window)
  -- parked flows with an earlier deadline come first, though they wait outside the queue
  parked_ahead = parked_ahead or redis.call("ZCOUNT", parked, "-inf", "(" .. ARGV[2])
  local rank = redis.call("ZRANK", queue, waiter) + parked_ahead
  if rank < free then
    leave()
    return grant()
  end
  -- the earliest moment enough calls could leave the window for this waiter's place in the queue: a
  -- finished call leaves one period after its end; one in flight (scored by the latest moment it can
  -- end) might end now, so no sooner than a period from now. Optimistic on purpose: a flow is doomed
  -- only when even that is too late, and it polls again then.
  -- A waiter further back than the window holds waits a period more for each `limit` ahead of it.
  local ahead = rank - free
  local held = limit - free
  -- (with the window empty, the free slots go to those ahead: to waiters in the queue, who ask again
  -- within moments, or to parked flows, whose calls then hold them for a period)
  local wait = parked_ahead > 0 and period or 0.05
  if held > 0 then
    local entry = redis.call("ZRANGE", window, ahead % held, ahead % held, "WITHSCORES")
    if entry[2] then
      wait = math.max(0.001, math.min(tonumber(entry[2]), now) + period - now)
    end
  end
  wait = wait + math.floor(ahead / limit) * period
  if now + wait > give_up_at then
    leave()
    return {"doomed", tostring(wait)}
  end
  redis.call("PEXPIRE", queue, math.ceil(stale * 1000) + 1000)
  redis.call("PEXPIRE", alive, math.ceil(stale * 1000) + 1000)
  return {"wait", tostring(wait)}
end
