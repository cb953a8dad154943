-- A granted call ended: score it by its end (Redis's clock), which frees its slot one period later.
-- The window's key already lives past that (budget_acquire.lua keeps it until its latest entry stops
-- counting); it is kept at least a period from now all the same, never shortened.
--
-- KEYS: 1 window zset
-- ARGV: 1 the waiter id the call was granted to, 2 period (s)
-- Returns 1

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call("ZADD", KEYS[1], "XX", "CH", now, ARGV[1]) == 1 then
  local ms = math.ceil(tonumber(ARGV[2]) * 1000) + 1000
  if redis.call("PTTL", KEYS[1]) < ms then
    redis.call("PEXPIRE", KEYS[1], ms)
  end
end
return 1
