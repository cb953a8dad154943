-- The account's pause is over: forget it, so that exactly one process reports the end.
--
-- KEYS: 1 the account's pause (its end, epoch seconds on Redis's clock)
-- ARGV: none
-- Returns 1 when this call found the pause over and removed it, else 0

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ends = redis.call("GET", KEYS[1])
if ends and tonumber(ends) <= now then
  redis.call("DEL", KEYS[1])
  return 1
end
return 0
