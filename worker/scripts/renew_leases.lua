-- A worker process's heartbeat: it renews the lease of every flow its tasks are working on, in one call,
-- but only where the task still owns the work. A lease that lapsed and was taken up by another task is
-- not renewed by the task that lost it; that task learns it lost the flow and stops.
--
-- KEYS: 1 leases zset, 2.. the flow hashes, in the order of the flows in ARGV
-- ARGV: 1 lease seconds, then flow id, owner, flow id, owner, ...
-- Returns the ids of the flows whose work their task no longer owns

local t = redis.call("TIME")
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local flow_id, owner = ARGV[i], ARGV[i + 1]
  -- a lease already dropped by a transition (the work is done) is not brought back
  if redis.call("HGET", KEYS[i / 2 + 1], "owner") == owner and redis.call("ZSCORE", KEYS[1], flow_id) then
    redis.call("ZADD", KEYS[1], until_, flow_id)
  else
    lost[#lost + 1] = flow_id
  end
end
return lost
