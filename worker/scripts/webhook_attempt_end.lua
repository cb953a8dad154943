-- The outcome of a delivery attempt, counted once: only the attempt that still owns the delivery
-- (see webhook_attempt_begin.lua) records it. An attempt whose lease lapsed (its process stalled) changes
-- nothing, unless it was answered 2xx while the delivery is still pending: then the delivery is
-- delivered (the receiver has it; another attempt in flight is fenced out in turn).
-- It also keeps the endpoint's failing streak (since when no attempt got a 2xx) and, when the
-- delivery is over, hands the flow's turn at this endpoint to its next event. The attempt's place in
-- flight goes to that event, or else to the first delivery waiting for one at the endpoint
-- (webhook_wait_turn.lua) that can take it: it leaves the waiting set (two attempts that end together
-- hand their places to two deliveries), and so do the ones passed over on the way, over (failed by a
-- disable, say) or held behind their flow's earlier event (whose end queues them). An endpoint that
-- answers at once drains a backlog as fast as it answers, not one turn (a share of
-- WEBHOOK_TIMEOUT_SECONDS) at a time.
--
-- KEYS: 1 the delivery's hash, 2 deliveries due, 3 deliveries pending, 4 the endpoint's attempts in
--       flight (sorted sets), 5 the endpoint's hash, 6 the endpoint's waiting deliveries (sorted set)
-- ARGV: 1 delivery id, 2 owner id, 3 "delivered" | "retry" | "failed", 4 the answer's status code or "",
--       5 seconds until the next attempt (retry), 6 seconds to keep the delivery's hash from now,
--       7 seconds of failing after which the endpoint is to be disabled, 8 seconds the next event of
--       the flow gets before its task is queued again (it is queued at once by the caller), 9 the
--       prefix of a flow's deliveries to this endpoint not over yet (sorted set by seq; flow id follows),
--       10 the prefix of a tenant's deliveries pending (sorted set; the tenant follows), 11 the prefix of
--       a delivery's hash (its id follows)
-- Returns {"fenced"} | {"ok", attempts, next attempt's epoch seconds or "", the flow's next delivery
--         id or "", the epoch seconds the endpoint has been failing since (when it is to be disabled) or "",
--         the waiting delivery whose turn is now or ""} (the caller queues the tasks of the two at once)

local delivery, due, pending, endpoint = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local delivery_id, outcome = ARGV[1], ARGV[3]
redis.call("ZREM", KEYS[4], ARGV[2])
local held = redis.call("HMGET", delivery, "owner", "flow_id", "status", "tenant")
if held[1] ~= ARGV[2] then
  if outcome ~= "delivered" or held[3] ~= "pending" then
    return {"fenced"}
  end
end
local order = ARGV[9] .. (held[2] or "")
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local attempts = redis.call("HINCRBY", delivery, "attempts", 1)
redis.call("HDEL", delivery, "owner", "owner_until")
redis.call("HSET", delivery, "last_status_code", ARGV[4], "last_attempt_at", now)

local disable = ""
if redis.call("EXISTS", endpoint) == 1 then
  if outcome == "delivered" then
    redis.call("HDEL", endpoint, "failing_since")
  else
    local since = tonumber(redis.call("HGET", endpoint, "failing_since") or "")
    if not since then
      since = now
      redis.call("HSET", endpoint, "failing_since", tostring(now))
    end
    if now - since >= tonumber(ARGV[7]) and redis.call("HGET", endpoint, "status") ~= "disabled" then
      disable = tostring(since)
    end
  end
end

local next_at, successor = "", ""
if outcome == "retry" then
  next_at = now + tonumber(ARGV[5])
  redis.call("HSET", delivery, "next_attempt_at", next_at)
  redis.call("ZADD", due, next_at, delivery_id)
else
  redis.call("HSET", delivery, "status", outcome, "next_attempt_at", "")
  redis.call("ZREM", due, delivery_id)
  redis.call("ZREM", pending, delivery_id)
  redis.call("ZREM", ARGV[10] .. (held[4] or ""), delivery_id)
  redis.call("ZREM", order, delivery_id)
  local first = redis.call("ZRANGE", order, 0, 0)
  if #first > 0 then
    successor = first[1]
    redis.call("ZADD", due, "XX", now + tonumber(ARGV[8]), successor)
  end
end
-- whether a waiting delivery can take the place: pending, and no earlier event of its flow pending ahead
local function can_go(candidate)
  local fields = redis.call("HMGET", ARGV[11] .. candidate, "status", "flow_id")
  if candidate == delivery_id or fields[1] ~= "pending" then
    return false
  end
  local ahead = redis.call("ZRANGE", ARGV[9] .. (fields[2] or ""), 0, 0)
  return #ahead == 0 or ahead[1] == candidate or redis.call("HGET", ARGV[11] .. ahead[1], "status") ~= "pending"
end

local waiting = ""
if successor == "" then
  for _ = 1, 16 do  -- deliveries passed over at most: the script stays short, the rest wait their turns
    local first = redis.call("ZRANGE", KEYS[6], 0, 0)
    if #first == 0 then
      break
    end
    redis.call("ZREM", KEYS[6], first[1])
    if can_go(first[1]) then
      waiting = first[1]
      break
    end
  end
end
redis.call("EXPIRE", delivery, ARGV[6])
return {"ok", attempts, tostring(next_at), successor, disable, waiting}
