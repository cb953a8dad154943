-- A delivery task takes the next attempt of its delivery: only when the delivery is pending, its
-- moment has come and no other attempt is in flight (a task run twice, by a redelivered message or a
-- second queued copy, makes one attempt). The attempt is fenced by `owner` until `owner_until`.
--
-- KEYS: 1 the delivery's hash, 2 deliveries due (sorted set)
-- ARGV: 1 delivery id, 2 owner id of this attempt, 3 seconds the attempt may take (its lease)
-- Returns {"begun", endpoint id, body, attempts so far, event id} | {"missing"} | {"over", status}
--       | {"wait", seconds until the attempt's moment} | {"busy", seconds until the other attempt's lease ends}

local delivery, due = KEYS[1], KEYS[2]
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local current = redis.call("HMGET", delivery, "status", "next_attempt_at", "owner_until", "endpoint", "body",
                           "attempts", "event_id")
if not current[1] then
  redis.call("ZREM", due, ARGV[1])
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
local lease_end = now + tonumber(ARGV[3])
redis.call("HSET", delivery, "owner", ARGV[2], "owner_until", lease_end)
redis.call("ZADD", due, lease_end, ARGV[1])
return {"begun", current[4], current[5], current[6] or "0", current[7]}
