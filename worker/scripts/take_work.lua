-- A task takes a flow's work: one owner at a time. Another task for the same flow (a redelivery, a
-- requeue by the sweeper) finds the owner's lease alive and leaves the flow alone. The owner id is the
-- task's fence: the flow's transitions made by the task carry it and happen only while it still owns the
-- work. The task gets the flow and its token with it, in the same round trip.
--
-- A task always asks its account's budget for its first call next; with an ask given (KEYS 4-10, ARGV
-- 5-), that ask is made here too, in the same round trip, when the taken flow is of that account and has
-- its token (a flow without one makes no call): exactly budget_acquire.lua's ask, the flow's deadline as
-- its priority, that less the given seconds as its give-up time, and the slot the flow was released
-- from parking with (its `budget_slot`), if any.
--
-- KEYS: 1 flow hash, 2 leases zset, 3 token key; with an ask: 4-10 budget_acquire.lua's KEYS 1-7
-- ARGV: 1 flow id, 2 owner (random per task run), 3 lease seconds, 4 the states the task works on, ",a,b,"
--       with an ask: 5 its account id, 6 the account of flows that name none, 7 seconds the give-up time
--       comes before the deadline, 8- budget_acquire.lua's ARGV 1-12 (its 2, 7 and 12 are the flow's)
-- Returns {"gone"}: no such flow, or not in one of those states (a duplicate task)
--         {"busy"}: another owner's lease is alive
--         {"taken", flat HGETALL of the flow, token or false, lease end (epoch seconds, Redis's clock),
--          budget_acquire.lua's answer, or false when no ask was made}

--! include budget_ask

-- the flow is read once: what the take decides on, and (its owner changed as below) what it answers
local flat = redis.call("HGETALL", KEYS[1])
local flow, owner_at = {}, nil
for i = 1, #flat, 2 do
  flow[flat[i]] = flat[i + 1]
  if flat[i] == "owner" then
    owner_at = i + 1
  end
end
if not flow.state or not string.find(ARGV[4], "," .. flow.state .. ",", 1, true) then
  return {"gone"}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
local owned_by_other = flow.owner and flow.owner ~= "" and flow.owner ~= ARGV[2]
if owned_by_other and score and tonumber(score) > now then
  return {"busy"}
end
local lease_until = now + tonumber(ARGV[3])
redis.call("HSET", KEYS[1], "owner", ARGV[2])
if owner_at then
  flat[owner_at] = ARGV[2]
else
  flat[#flat + 1] = "owner"
  flat[#flat + 1] = ARGV[2]
end
redis.call("ZADD", KEYS[2], lease_until, ARGV[1])
local token = redis.call("GET", KEYS[3])
local asked = false
if ARGV[5] and token then
  local account = flow.account
  if not account or account == "" then
    account = ARGV[6]
  end
  if account == ARGV[5] and flow.deadline then
    local ask_keys = {KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]}
    local ask_argv = {}
    for i = 8, #ARGV do
      ask_argv[i - 7] = ARGV[i]
    end
    ask_argv[2] = flow.deadline
    ask_argv[7] = tostring(tonumber(flow.deadline) - tonumber(ARGV[7]))
    ask_argv[12] = flow.budget_slot or ""
    asked = budget_ask(ask_keys, ask_argv, now)
  end
end
return {"taken", flat, token, tostring(lease_until), asked}
