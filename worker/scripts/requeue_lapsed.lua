-- The sweeper takes up a flow whose work stopped showing progress (its task's process died, hangs, or
-- was paused), in one atomic step: the lapsed owner loses the work (its fence no longer matches, so
-- nothing it does later changes the flow), the lease moves ahead, and the task that takes the work up is
-- queued in the same call when the broker is this Redis. Several sweepers are safe: only one finds the
-- lease lapsed. A flow that no longer needs a worker (a selection offered, an end reached) loses its
-- lease here, in the same atomic step, so a lease set meanwhile is never dropped by mistake.
--
-- KEYS: 1 flow hash, 2 leases zset
-- ARGV: 1 flow id, 2 the state the queued task works on, 3 seconds the requeued work gets to start,
--       4 the states in which a task works on a flow, ",a,b,",
--       5 "" or a Celery broker list, 6 the task's message, 7 "" or its task-sent event's channel, 8 event
-- Returns "alive" (lease not lapsed) | "forgotten" (no work left: lease dropped)
--       | "moved" (the flow is in another working state than ARGV[2]: the next pass sees it)
--       | "requeued"

local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
if not score then
  return "alive"
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tonumber(score) > now then
  return "alive"
end
local state = redis.call("HGET", KEYS[1], "state")
if not state or not string.find(ARGV[4], "," .. state .. ",", 1, true) then
  redis.call("ZREM", KEYS[2], ARGV[1])
  return "forgotten"
end
if state ~= ARGV[2] then
  return "moved"
end
redis.call("HSET", KEYS[1], "owner", "")
redis.call("ZADD", KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if ARGV[5] ~= "" then
  redis.call("LPUSH", ARGV[5], ARGV[6])
  if ARGV[7] ~= "" then
    redis.call("PUBLISH", ARGV[7], ARGV[8])
  end
end
return "requeued"
