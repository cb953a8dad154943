-- A worker's unparker releases an account's parked flows while its budget has room, earliest deadline
-- first, in one step per batch: each released flow gets a slot of the budget reserved in its name (in
-- the window, counted in the day; its task's first call uses it), a lease for its queued task, and its
-- task pushed onto the broker list when the broker is this Redis. A flow leaves the parked set only here,
-- so a process that dies before or after this call loses nothing and doubles nothing; when the task is
-- sent after this call instead, its lease lapses if the sending fails and the sweeper queues it again.
-- Candidates no longer parked (ended, taken up by another task) are dropped from the set. A flow whose
-- deadline comes before the account can next release anything (its pause or the day's limit outlives
-- it: "blocked"; no slot before it: "late") leaves the set too and is returned, for the unparker to end
-- at once, as a task waiting in its thread would be ended.
--
-- A slot may be reserved a little before it frees (`lead`), so the task is under way when it does: it
-- takes the place of a finished call whose period ends within the lead, and its task makes no call
-- before that moment (the moment is part of the slot's name; budget_acquire.lua holds the task back
-- until then). Such a slot is also kept in the early zset until it frees: the finished call it replaces
-- and the slot are then both in the window, and they count as one.
--
-- After a pause (a 429: account_pause.lua keeps its end as the ramp's start), the parked flows go out
-- through a window: one call first (a block still in force meets that one alone), then, once a call has
-- ended since the pause, at most ARGV[11] in flight (granted or reserved), the next released as one ends,
-- until ARGV[10] have ended (or the ramp key expires). Released all at once, every one of them would
-- meet the next 429 and be parked again: a task run wasted for each. A window that grew with each ended
-- call (TCP's slow start) wasted as many at each new 429 as calls had passed before it; a fixed one
-- wastes fewer than ARGV[11], and a few calls in flight already keep a worker's tasks busy, so the
-- calls between two 429s go out no slower.
--
-- KEYS: 1 the account's parked zset, 2 parked accounts zset (members: the accounts' parked zsets),
--       3 budget window zset, 4 budget queue zset, 5 the account's pause, 6 leases zset, 7 early zset,
--       8 the account's resume ramp (the end of its last pause, while its ramp lasts),
--       9.. the candidates' flow hashes (in ARGV's order)
-- ARGV: 1 limit, 2 period (s), 3 seconds a reserved slot is held (the task's start and its call),
--       4 calls a day or "", 5 prefix of the day's counter, 6 seconds the queued task gets to start (its
--       lease), 7 the least time left for a call (s), 8 "" or the Celery broker list, 9 lead (s),
--       10 calls that must end after a pause before its ramp is over, 11 the ramp's window (calls in
--       flight), 12 seconds from now past which a call's latest end (its score) counts it as in flight
--       for the ramp: a call granted longer ago than the ramp's probe was not refused by a block (a block
--       answers at once), so a call that hangs does not hold the window, then per candidate
--       (ARGV[13 + 5i ..]): flow id, the state its task works on, the task's message, "" or its
--       task-sent event's channel, the event
-- Returns {flow ids released, "1" when room is left for more parked flows than were given else "0",
--          seconds until the account is next due, or "-1" when nothing is parked any more,
--          {flow id, "blocked" | "late", ...}: the flows no slot can come for before their deadline,
--          "1" when the ramp after a pause holds parked flows back until calls in flight end else "0"}

local parked, accounts, window, queue, early = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7]
local member, limit, period = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local hold, daily_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, least, broker, lead = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call("ZREMRANGEBYSCORE", window, "-inf", now - period)
redis.call("ZREMRANGEBYSCORE", early, "-inf", now)

-- parked flows whose deadline leaves no time for a call before `at` (a batch at a time: the rest in the
-- next step, which comes at once)
local doomed = {}
local function doom_before(at, kind)
  for _, flow_id in ipairs(redis.call("ZRANGEBYSCORE", parked, "-inf", "(" .. (at + least), "LIMIT", 0, 64)) do
    redis.call("ZREM", parked, flow_id)
    doomed[#doomed + 1] = flow_id
    doomed[#doomed + 1] = kind
  end
end

local function due_in(seconds)
  if redis.call("ZCARD", parked) == 0 then
    redis.call("ZREM", accounts, member)
    return "-1"
  end
  redis.call("ZADD", accounts, now + seconds, member)
  return tostring(seconds)
end

local paused_until = tonumber(redis.call("GET", KEYS[5]) or "0")
if paused_until > now then
  doom_before(paused_until, "blocked")
  return {{}, "0", due_in(paused_until - now), doomed, "0"}
end
-- the most flows released now while a ramp lasts (nil: no ramp): the window (one until a call has
-- ended since the pause) less the calls in flight (granted or reserved: scored by their latest end,
-- after now) that were granted within the ramp's probe (ARGV[12])
local cap = nil
local ramp_from = tonumber(redis.call("GET", KEYS[8]) or "0")
if ramp_from > 0 then
  local ended = redis.call("ZCOUNT", window, ramp_from, now)
  if ended >= tonumber(ARGV[10]) then
    redis.call("DEL", KEYS[8])
  else
    local in_flight = redis.call("ZCOUNT", window, "(" .. (now + tonumber(ARGV[12])), "+inf")
    cap = math.min(tonumber(ARGV[11]), 1 + ended) - in_flight
  end
end
local day = math.floor(now / 86400)
local day_key = ARGV[5] .. day
local used = tonumber(redis.call("GET", day_key) or "0")

-- the moments slots free: free now (an early slot and the call it replaces are one), then as the
-- finished calls not yet replaced leave the window within the lead, earliest first
local pending = redis.call("ZCARD", early)
local free_now = math.max(0, limit - redis.call("ZCARD", window) + pending)
local soon = {}
local leaving = redis.call("ZRANGEBYSCORE", window, "-inf", now + lead - period, "WITHSCORES", "LIMIT", pending, limit)
for j = 2, #leaving, 2 do
  soon[#soon + 1] = tonumber(leaving[j]) + period
end
local function frees_at(k)
  if k <= free_now then
    return now
  end
  return soon[k - free_now]
end

local released = {}
local stopped, waiting_ahead = false, false
for i = 1, #KEYS - 8 do
  local base = 13 + (i - 1) * 5
  local flow_id, state = ARGV[base], ARGV[base + 1]
  local flow = KEYS[8 + i]
  local deadline = redis.call("ZSCORE", parked, flow_id)
  if deadline then
    local current = redis.call("HMGET", flow, "state", "owner")
    local working = current[1] == state and (current[2] or "") == ""
    if not working or redis.call("ZSCORE", KEYS[6], flow_id) then
      redis.call("ZREM", parked, flow_id)
    elseif tonumber(deadline) - least < now then
      redis.call("ZREM", parked, flow_id)
      doomed[#doomed + 1] = flow_id
      doomed[#doomed + 1] = "late"
    elseif cap and #released >= cap then
      stopped = true
      break
    else
      -- waiters in a thread (short waits, Step 1) with an earlier deadline keep their precedence
      local ahead = redis.call("ZCOUNT", queue, "-inf", "(" .. deadline)
      local at = frees_at(#released + ahead + 1)
      if not at or (daily_limit and used + #released >= daily_limit) then
        stopped, waiting_ahead = true, ahead > 0
        break
      end
      local slot = "slot:" .. flow_id .. ":" .. string.format("%.6f", at)
      redis.call("ZADD", window, at + hold, slot)
      if at > now then
        redis.call("ZADD", early, at, slot)
      end
      redis.call("HSET", flow, "budget_slot", slot)
      redis.call("ZADD", KEYS[6], now + lease, flow_id)
      redis.call("ZREM", parked, flow_id)
      if broker ~= "" then
        redis.call("LPUSH", broker, ARGV[base + 2])
        if ARGV[base + 3] ~= "" then
          redis.call("PUBLISH", ARGV[base + 3], ARGV[base + 4])
        end
      end
      released[#released + 1] = flow_id
    end
  end
end
if #released > 0 then
  local window_ms = math.ceil((period + hold + lead) * 1000) + 1000
  if redis.call("PTTL", window) < window_ms then -- never shorter: a longer call may still count
    redis.call("PEXPIRE", window, window_ms)
  end
  redis.call("PEXPIRE", early, math.ceil(lead * 1000) + 1000)
  redis.call("INCRBY", day_key, #released)
  redis.call("EXPIRE", day_key, (day + 2) * 86400 - math.floor(now))
end

-- next due: at once while room is left; else a lead before the next finished call not yet replaced
-- leaves the window (a call still in flight, scored by its latest end, may end any moment: a period
-- from now at the latest)
local pending_after = redis.call("ZCARD", early)
local room_left = limit - redis.call("ZCARD", window) + pending_after > 0
local wait = 0
if not room_left then
  local entry = redis.call("ZRANGE", window, pending_after, pending_after, "WITHSCORES")
  if entry[2] then
    wait = math.max(0.001, math.min(tonumber(entry[2]), now) + period - lead - now)
  end
elseif stopped and waiting_ahead then
  wait = 0.05 -- room, but taken by earlier waiters in threads: look again shortly
end
local kind = "late"
local held_back = cap ~= nil and #released >= cap and redis.call("ZCARD", parked) > 0
if held_back and wait < 0.05 then
  wait = 0.05 -- the ramp waits for calls in flight to end (a worker whose task ended one looks at once)
end
if daily_limit and used + #released >= daily_limit then
  wait = (day + 1) * 86400 - now
  kind = "blocked"
end
doom_before(now + wait, kind)
local more = not stopped and not held_back and #KEYS > 8 and room_left and redis.call("ZCARD", parked) > 0
return {released, more and "1" or "0", due_in(wait), doomed, held_back and "1" or "0"}
