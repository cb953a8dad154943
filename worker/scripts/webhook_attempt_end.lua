-- The outcome of a delivery attempt, counted once: only the attempt that still owns the delivery
-- (see webhook_attempt_begin.lua) records it. An attempt whose lease lapsed (its process stalled) changes
-- nothing, unless it was answered 2xx while the delivery is still pending: then the delivery is
-- delivered (the receiver has it; another attempt in flight is fenced out in turn).
--
-- KEYS: 1 the delivery's hash, 2 deliveries due, 3 deliveries pending, 4 the endpoint's attempts in
--       flight (sorted sets)
-- ARGV: 1 delivery id, 2 owner id, 3 "delivered" | "retry" | "failed", 4 the answer's status code or "",
--       5 seconds until the next attempt (retry), 6 seconds to keep the delivery's hash from now
-- Returns {"fenced"} | {"ok", attempts, next attempt's epoch seconds or ""}

local delivery, due, pending = KEYS[1], KEYS[2], KEYS[3]
local delivery_id, outcome = ARGV[1], ARGV[3]
redis.call("ZREM", KEYS[4], ARGV[2])
if redis.call("HGET", delivery, "owner") ~= ARGV[2] then
  if outcome ~= "delivered" or redis.call("HGET", delivery, "status") ~= "pending" then
    return {"fenced"}
  end
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local attempts = redis.call("HINCRBY", delivery, "attempts", 1)
redis.call("HDEL", delivery, "owner", "owner_until")
redis.call("HSET", delivery, "last_status_code", ARGV[4], "last_attempt_at", now)
local next_at = ""
if outcome == "retry" then
  next_at = now + tonumber(ARGV[5])
  redis.call("HSET", delivery, "next_attempt_at", next_at)
  redis.call("ZADD", due, next_at, delivery_id)
else
  redis.call("HSET", delivery, "status", outcome, "next_attempt_at", "")
  redis.call("ZREM", due, delivery_id)
  redis.call("ZREM", pending, delivery_id)
end
redis.call("EXPIRE", delivery, ARGV[6])
return {"ok", attempts, tostring(next_at)}
