-- One event's delivery to one endpoint, made once whoever asks how often (the dispatcher may see an
-- event twice); a replay makes a delivery that is over (delivered or failed) pending again. A tenant
-- with `cap` deliveries pending gets no new one (nor one pending again): the caller comes back to it
-- once some have ended (worker/webhooks/dispatcher.py), so that nothing is dropped.
--
-- KEYS: 1 the delivery's hash, 2 the endpoint's deliveries (sorted set, by creation)
--       3 deliveries due (sorted set, by when their task must next show up)
--       4 deliveries pending (sorted set, by creation)
--       5 the flow's deliveries to this endpoint not over yet (sorted set, by seq: the order they go in)
--       6 the tenant's deliveries pending (sorted set, by creation)
-- ARGV: 1 delivery id, 2 seconds to keep the delivery's hash, 3 seconds the endpoint's list keeps a
--       delivery, 4 "1": a replay, 5 the event's seq within its flow (0: no flow, no order),
--       6 deliveries the tenant may have pending at once,
--       7.. field, value pairs (endpoint, tenant, event id, type, flow, body)
-- Returns 1 when the delivery is new (or pending again) and its task is to be queued, 0 when it exists
--         already, -1 when the tenant has `cap` deliveries pending (nothing made)

local delivery, listed, due, pending, order, tenant_pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local delivery_id, keep, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local status = redis.call("HGET", delivery, "status")
if status == "pending" or (status and ARGV[4] ~= "1") then
  return 0
end
if redis.call("ZCARD", tenant_pending) >= tonumber(ARGV[6]) then
  return -1
end
local fields = {"status", "pending", "attempts", 0, "next_attempt_at", now, "created_at", now,
                "last_status_code", "", "seq", seq}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call("HSET", delivery, unpack(fields))
redis.call("HDEL", delivery, "owner", "owner_until")
redis.call("EXPIRE", delivery, keep)
redis.call("ZADD", listed, now, delivery_id)
redis.call("ZREMRANGEBYSCORE", listed, "-inf", now - tonumber(ARGV[3]))
redis.call("EXPIRE", listed, keep)
redis.call("ZADD", due, now, delivery_id)
redis.call("ZADD", pending, now, delivery_id)
redis.call("ZADD", tenant_pending, now, delivery_id)
if seq > 0 then
  redis.call("ZADD", order, seq, delivery_id)
  redis.call("EXPIRE", order, keep)
end
return 1
