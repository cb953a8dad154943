-- Flows leave an account's parked set without being released (their account is no longer configured
-- anywhere, so no unparker releases them: worker.upstream.parking); once the set is empty, the account
-- leaves the parked accounts too, in the same step, so a flow parked meanwhile is never left behind.
--
-- KEYS: 1 the account's parked zset, 2 parked accounts zset (members: the accounts' parked zsets)
-- ARGV: 1.. the flow ids
-- Returns the number of flows still parked

for i = 1, #ARGV do
  redis.call("ZREM", KEYS[1], ARGV[i])
end
local left = redis.call("ZCARD", KEYS[1])
if left == 0 then
  redis.call("ZREM", KEYS[2], KEYS[1])
end
return left
