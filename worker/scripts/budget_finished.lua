-- A granted call ended: score it by its end (Redis's clock), which frees its slot one period later.
--
-- KEYS: 1 window zset
-- ARGV: 1 the waiter id the call was granted to
-- Returns 1

local t = redis.call("TIME")
redis.call("ZADD", KEYS[1], "XX", tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
return 1
