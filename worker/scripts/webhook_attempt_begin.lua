-- A delivery task takes the next attempt of its delivery: only when the delivery is pending, its
-- moment has come, no other attempt of it is in flight (a task run twice, by a redelivered message or a
-- second queued copy, makes one attempt), the flow's earlier events to this endpoint are over, its
-- endpoint has fewer attempts in flight, across every worker, than it may, and the endpoint's rate
-- allows one more. The attempt is fenced by `owner` until `owner_until`, and counted in the endpoint's
-- in-flight set until it ends (webhook_attempt_end.lua) or its lease does.
--
-- KEYS: 1 the delivery's hash, 2 deliveries due, 3 deliveries pending, 4 the endpoint's attempts in
--       flight, 5 the endpoint's waiting deliveries (webhook_wait_turn.lua; sorted sets), 6 the
--       endpoint's hash, 7 the endpoint's attempts in its rate window (sorted set of moments)
-- ARGV: 1 delivery id, 2 owner id of this attempt, 3 seconds the attempt may take (its lease),
--       4 attempts an endpoint may have in flight at once, 5 the prefix of a delivery's hash (its id
--       follows), 6 seconds a held delivery waits at most before its task is queued again (its
--       predecessor's end queues it at once), 7 the prefix of a flow's deliveries to this endpoint not
--       over yet (sorted set by seq; the flow id follows), 8 the prefix of a tenant's deliveries pending
--       (sorted set; the tenant follows)
-- Returns {"begun", endpoint id, body, attempts so far, event id, now (epoch seconds: the attempt's time)}
--       | {"missing"} | {"over", status} | {"wait", seconds until the attempt's moment}
--       | {"busy", seconds until the other attempt's lease ends}
--       | {"held"} (an earlier event of its flow goes first)
--       | {"full", seconds until an attempt in flight to the endpoint must have ended}
--       | {"rate", seconds until the endpoint's rate allows one more}

local delivery, due, pending, in_flight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local endpoint, rate = KEYS[6], KEYS[7]
local delivery_id, lease = ARGV[1], tonumber(ARGV[3])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local current = redis.call("HMGET", delivery, "status", "next_attempt_at", "owner_until", "endpoint", "body",
                           "attempts", "event_id", "seq", "flow_id", "tenant")
local order = ARGV[7] .. (current[9] or "")
if not current[1] then -- expired (or never made): nothing will ever end it, so it leaves the sets now
  -- (its tenant, unknown here, finds it gone when it counts its pending: webhook_pending_prune.lua)
  redis.call("ZREM", due, delivery_id)
  redis.call("ZREM", pending, delivery_id)
  redis.call("ZREM", order, delivery_id)
  return {"missing"}
end
if current[1] ~= "pending" then
  return {"over", current[1]}
end
if redis.call("HGET", endpoint, "status") == "disabled" then
  redis.call("HSET", delivery, "status", "failed", "next_attempt_at", "")
  redis.call("ZREM", due, delivery_id)
  redis.call("ZREM", pending, delivery_id)
  redis.call("ZREM", ARGV[8] .. (current[10] or ""), delivery_id)
  redis.call("ZREM", order, delivery_id)
  return {"over", "failed"}
end
local next_at = tonumber(current[2] or "0")
if next_at > now + 0.05 then
  return {"wait", tostring(next_at - now)}
end
local owner_until = tonumber(current[3] or "0")
if owner_until > now then
  return {"busy", tostring(owner_until - now)}
end

-- order within the flow: the first of the flow's deliveries not over yet goes first
local seq = tonumber(current[8] or "0") or 0
if seq > 0 then
  while true do
    local first = redis.call("ZRANGE", order, 0, 0, "WITHSCORES")
    if #first == 0 or first[1] == delivery_id or tonumber(first[2]) >= seq then
      break
    end
    if redis.call("HGET", ARGV[5] .. first[1], "status") == "pending" then
      redis.call("ZADD", due, now + tonumber(ARGV[6]), delivery_id)
      return {"held"}
    end
    redis.call("ZREM", order, first[1])  -- over or gone, yet still listed: it holds nothing up
  end
end

redis.call("ZREMRANGEBYSCORE", in_flight, "-inf", now)
if redis.call("ZCARD", in_flight) >= tonumber(ARGV[4]) then
  local first = redis.call("ZRANGE", in_flight, 0, 0, "WITHSCORES")
  return {"full", tostring(tonumber(first[2]) - now)}
end

-- the endpoint's rate, shared by every worker: a sliding window of the attempts made
local rate_count = tonumber(redis.call("HGET", endpoint, "rate_count") or "0") or 0
if rate_count > 0 then
  local period = tonumber(redis.call("HGET", endpoint, "rate_period"))
  redis.call("ZREMRANGEBYSCORE", rate, "-inf", now - period)
  if redis.call("ZCARD", rate) >= rate_count then
    local oldest = redis.call("ZRANGE", rate, 0, 0, "WITHSCORES")
    local wait = math.max(0.001, tonumber(oldest[2]) + period - now)
    redis.call("ZADD", due, now + wait + lease, delivery_id)
    return {"rate", tostring(wait)}
  end
  redis.call("ZADD", rate, now, ARGV[2])
  redis.call("PEXPIRE", rate, math.ceil(period * 1000) + 1000)
end

local lease_end = now + lease
redis.call("HSET", delivery, "owner", ARGV[2], "owner_until", lease_end)
redis.call("ZADD", due, lease_end, delivery_id)
redis.call("ZADD", in_flight, lease_end, ARGV[2])
redis.call("ZREM", KEYS[5], delivery_id)
redis.call("PEXPIREAT", in_flight, math.ceil(lease_end * 1000))
return {"begun", current[4], current[5], current[6] or "0", current[7], tostring(now)}
