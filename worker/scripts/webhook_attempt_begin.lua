-- A delivery task takes the next attempt of its delivery: only when the delivery is pending, its
-- moment has come, no other attempt of it is in flight (a task run twice, by a redelivered message or a
-- second queued copy, makes one attempt) and its endpoint has fewer attempts in flight, across every
-- worker, than it may. The attempt is fenced by `owner` until `owner_until`, and counted in the
-- endpoint's in-flight set until it ends (webhook_attempt_end.lua) or its lease does.
--
-- KEYS: 1 the delivery's hash, 2 deliveries due, 3 deliveries pending, 4 the endpoint's attempts in
--       flight, 5 the endpoint's waiting deliveries (webhook_wait_turn.lua; sorted sets)
-- ARGV: 1 delivery id, 2 owner id of this attempt, 3 seconds the attempt may take (its lease),
--       4 attempts an endpoint may have in flight at once
-- Returns {"begun", endpoint id, body, attempts so far, event id, now (epoch seconds: the attempt's time)}
--       | {"missing"} | {"over", status} | {"wait", seconds until the attempt's moment}
--       | {"busy", seconds until the other attempt's lease ends} | {"full", seconds until an attempt in
--         flight to the endpoint must have ended}

local delivery, due, pending, in_flight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local current = redis.call("HMGET", delivery, "status", "next_attempt_at", "owner_until", "endpoint", "body",
                           "attempts", "event_id")
if not current[1] then -- expired (or never made): nothing will ever end it, so it leaves the sets now
  redis.call("ZREM", due, ARGV[1])
  redis.call("ZREM", pending, ARGV[1])
  return {"missing"}
end
if current[1] ~= "pending" then
  return {"over", current[1]}
end
local next_at = tonumber(current[2] or "0")
if next_at > now + 0.05 then
  return {"wait", tostring(next_at - now)}
end
local owner_until = tonumber(current[3] or "0")
if owner_until > now then
  return {"busy", tostring(owner_until - now)}
end
redis.call("ZREMRANGEBYSCORE", in_flight, "-inf", now)
if redis.call("ZCARD", in_flight) >= tonumber(ARGV[4]) then
  local first = redis.call("ZRANGE", in_flight, 0, 0, "WITHSCORES")
  return {"full", tostring(tonumber(first[2]) - now)}
end
local lease_end = now + tonumber(ARGV[3])
redis.call("HSET", delivery, "owner", ARGV[2], "owner_until", lease_end)
redis.call("ZADD", due, lease_end, ARGV[1])
redis.call("ZADD", in_flight, lease_end, ARGV[2])
redis.call("ZREM", KEYS[5], ARGV[1])
redis.call("PEXPIREAT", in_flight, math.ceil(lease_end * 1000))
return {"begun", current[4], current[5], current[6] or "0", current[7], tostring(now)}
