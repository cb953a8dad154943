-- The sweeper's half of the lease: a lapsed lease loses its owner, and exactly one sweeper gets to
-- requeue the flow (the lease moves ahead, so the next sweeper finds it alive).
--
-- KEYS: 1 flow hash, 2 leases zset
-- ARGV: 1 flow id, 2 now (epoch seconds), 3 the new lease's end (epoch seconds)
-- Returns 1 when this caller took the lapsed lease, else 0

local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call("ZADD", KEYS[2], ARGV[3], ARGV[1])
  if redis.call("EXISTS", KEYS[1]) == 1 then
    redis.call("HSET", KEYS[1], "owner", "")
  end
  return 1
end
return 0
