-- A worker that stops (SIGTERM) hands back a flow it holds, so another worker takes it up at once
-- instead of after its lease lapses. In one step, and only while the worker still holds it (the owner
-- matches: a task's owner id for a flow it works on, "" for a flow whose task it has received and not
-- started): the owner is cleared, so whatever the stopping task still does is fenced out, and the lease
-- lapses now, so requeue_lapsed.lua (called right after, or by any sweeper) queues the flow's task again.
--
-- KEYS: 1 flow hash, 2 leases zset
-- ARGV: 1 flow id, 2 owner, 3 the states in which a task works on a flow, ",a,b,"
-- Returns 1 when handed back, 0 when the worker no longer holds it (taken by another, or done)

local current = redis.call("HMGET", KEYS[1], "state", "owner")
if not current[1] or not string.find(ARGV[3], "," .. current[1] .. ",", 1, true) then
  return 0
end
if (current[2] or "") ~= ARGV[2] or not redis.call("ZSCORE", KEYS[2], ARGV[1]) then
  return 0
end
redis.call("HSET", KEYS[1], "owner", "")
redis.call("ZADD", KEYS[2], 0, ARGV[1])
return 1
