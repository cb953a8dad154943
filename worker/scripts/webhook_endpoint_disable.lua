-- An endpoint that has been failing too long is disabled, once whoever asks: no more attempts, its
-- pending deliveries end failed, and one `webhook.disabled` event goes to the tenant's channel and the
-- all-flows stream (the dispatcher then tells the tenant's other endpoints).
--
-- KEYS: 1 the endpoint's hash, 2 the endpoint's deliveries (sorted set), 3 deliveries due,
--       4 deliveries pending (sorted sets), 5 the all-flows stream, 6 the tenant's channel,
--       7 the tenant's deliveries pending (sorted set)
-- ARGV: 1 the event's JSON, 2 the prefix of a delivery's hash, 3 the prefix of a flow's order at this
--       endpoint (the flow id follows), 4 milliseconds the all-flows stream keeps an event,
--       5 seconds a failed delivery is kept
-- Returns {1, deliveries failed} when it disabled the endpoint, {0} when it was disabled already or gone

--! include webhook_fail_pending

local endpoint, listed, due, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status = redis.call("HGET", endpoint, "status")
if redis.call("EXISTS", endpoint) == 0 or status == "disabled" then
  return {0}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call("HSET", endpoint, "status", "disabled", "disabled_at", tostring(now))
local failed = fail_pending(listed, due, pending, KEYS[7], ARGV[2], ARGV[3], ARGV[5])
local event = ARGV[1]
local oldest_ms = math.floor(now * 1000) - tonumber(ARGV[4])
redis.call("XADD", KEYS[5], "MINID", "~", tostring(oldest_ms), "*", "event", event)
redis.call("PUBLISH", KEYS[6], event)
return {1, failed}
