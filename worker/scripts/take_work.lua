-- A task takes a flow's work: one owner at a time. Another task for the same flow (a redelivery, a
-- requeue by the sweeper) finds the owner's lease alive and leaves the flow alone. The task gets the
-- flow and its token with it, in the same round trip.
--
-- KEYS: 1 flow hash, 2 leases zset, 3 token key
-- ARGV: 1 flow id, 2 owner (random per task run), 3 now (epoch seconds), 4 lease until (epoch seconds),
--       5 the states the task works on, as ",a,b,"
-- Returns {"gone"}: no such flow, or not in one of those states (a duplicate task)
--         {"busy"}: another owner's lease is alive
--         {"taken", flat HGETALL of the flow, token or nil}

local current = redis.call("HMGET", KEYS[1], "state", "owner")
if not current[1] or not string.find(ARGV[5], "," .. current[1] .. ",", 1, true) then
  return {"gone"}
end
local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
local owned_by_other = current[2] and current[2] ~= "" and current[2] ~= ARGV[2]
if owned_by_other and score and tonumber(score) > tonumber(ARGV[3]) then
  return {"busy"}
end
redis.call("HSET", KEYS[1], "owner", ARGV[2])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[1])
return {"taken", redis.call("HGETALL", KEYS[1]), redis.call("GET", KEYS[3])}
