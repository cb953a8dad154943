-- A task takes a flow's work: one owner at a time. Another task for the same flow (a redelivery, a
-- requeue by the sweeper) finds the owner's lease alive and leaves the flow alone. The owner id is the
-- task's fence: the flow's transitions made by the task carry it and happen only while it still owns the
-- work. The task gets the flow and its token with it, in the same round trip.
--
-- KEYS: 1 flow hash, 2 leases zset, 3 token key
-- ARGV: 1 flow id, 2 owner (random per task run), 3 lease seconds, 4 the states the task works on, ",a,b,"
-- Returns {"gone"}: no such flow, or not in one of those states (a duplicate task)
--         {"busy"}: another owner's lease is alive
--         {"taken", flat HGETALL of the flow, token or false, lease end (epoch seconds, Redis's clock)}

local current = redis.call("HMGET", KEYS[1], "state", "owner")
if not current[1] or not string.find(ARGV[4], "," .. current[1] .. ",", 1, true) then
  return {"gone"}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
local owned_by_other = current[2] and current[2] ~= "" and current[2] ~= ARGV[2]
if owned_by_other and score and tonumber(score) > now then
  return {"busy"}
end
local lease_until = now + tonumber(ARGV[3])
redis.call("HSET", KEYS[1], "owner", ARGV[2])
redis.call("ZADD", KEYS[2], lease_until, ARGV[1])
return {"taken", redis.call("HGETALL", KEYS[1]), redis.call("GET", KEYS[3]), tostring(lease_until)}
