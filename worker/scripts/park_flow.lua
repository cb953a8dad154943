-- A task whose flow must wait for its account's budget parks the flow instead of waiting in its thread:
-- in one step it leaves the budget's queue, gives the work up (no owner, no lease, so the sweeper's
-- requeue of lapsed work leaves it alone) and puts the flow in the account's parked set, scored by its
-- deadline, for a worker's unparker to release when a slot frees (release_parked.lua). Only the task
-- that owns the work can park it; a flow that moved on meanwhile is left as it is. A slot it was
-- released with and did not use (the account was paused again before its task started) is given back:
-- left in the window, it would count as a call in flight until its hold ran out.
--
-- KEYS: 1 flow hash, 2 leases zset, 3 the account's parked zset, 4 parked accounts zset (scored by when
--       each is next due, by the name of its parked set), 5 budget queue zset, 6 budget alive zset,
--       7 budget window zset, 8 early slots zset
-- ARGV: 1 flow id, 2 owner (the task's fence), 3 the state the task works on, 4 the task's budget
--       waiter id, 5 seconds until the budget expects a slot for it
-- Returns "parked" | "lost" (another task owns the work, or the flow left that state)

redis.call("ZREM", KEYS[5], ARGV[4])
redis.call("ZREM", KEYS[6], ARGV[4])
local current = redis.call("HMGET", KEYS[1], "state", "owner", "deadline", "budget_slot")
if current[1] ~= ARGV[3] or current[2] ~= ARGV[2] then
  return "lost"
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call("HSET", KEYS[1], "owner", "")
redis.call("HDEL", KEYS[1], "budget_slot")
if current[4] then
  redis.call("ZREM", KEYS[7], current[4])
  redis.call("ZREM", KEYS[8], current[4])
end
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("ZADD", KEYS[3], tonumber(current[3]), ARGV[1])
-- the account is due no later than this flow's own slot (an earlier one set by another flow stands)
local due = now + tonumber(ARGV[5])
local current_due = redis.call("ZSCORE", KEYS[4], KEYS[3])
if not current_due or tonumber(current_due) > due then
  redis.call("ZADD", KEYS[4], due, KEYS[3])
end
return "parked"
