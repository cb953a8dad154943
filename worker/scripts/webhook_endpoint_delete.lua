-- An endpoint removed: its hash and its place in the indexes, and its deliveries not over yet end
-- `failed` at once (none is attempted again: there is nowhere to send it), so that they stop counting
-- against the tenant's pending deliveries. An attempt in flight is fenced out (it owns nothing now).
--
-- KEYS: 1 the endpoint's hash, 2 the tenant's endpoints, 3 every tenant's endpoints, 4 the endpoint's
--       deliveries, 5 deliveries due, 6 deliveries pending, 7 the tenant's deliveries pending (sorted sets)
-- ARGV: 1 endpoint id, 2 the prefix of a delivery's hash, 3 the prefix of a flow's order at this
--       endpoint (the flow id follows), 4 seconds a failed delivery is kept
-- Returns {1 (deleted) | 0 (no such endpoint), deliveries failed}

--! include webhook_fail_pending

local endpoint_id = ARGV[1]
redis.call("ZREM", KEYS[2], endpoint_id)
redis.call("ZREM", KEYS[3], endpoint_id)
local deleted = redis.call("DEL", KEYS[1])
local failed = fail_pending(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[2], ARGV[3], ARGV[4])
return {deleted, failed}
