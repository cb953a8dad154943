-- A tenant's count of pending deliveries, made true again: the scripts that end a delivery take it
-- out of the tenant's set, but one whose hash expired before its task came (tasks lost for longer than
-- its whole schedule) is found gone by a task that cannot tell its tenant. The oldest members are
-- looked at (those are the ones that can have expired) and any that is not pending any more leaves.
--
-- KEYS: 1 the tenant's deliveries pending (sorted set, by creation)
-- ARGV: 1 the prefix of a delivery's hash (its id follows), 2 at most this many looked at
-- Returns how many the tenant has pending now

local pending = KEYS[1]
for _, delivery_id in ipairs(redis.call("ZRANGE", pending, 0, tonumber(ARGV[2]) - 1)) do
  if redis.call("HGET", ARGV[1] .. delivery_id, "status") ~= "pending" then
    redis.call("ZREM", pending, delivery_id)
  end
end
return redis.call("ZCARD", pending)
