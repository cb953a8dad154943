-- An event stream (server-sent events) asks to open: admitted while the flow and the key it is opened
-- with have fewer streams open than their caps. Streams that should have ended by now (their process
-- died before it could say so) are not counted.
--
-- KEYS: 1 the flow's open streams, 2 the key's open streams (sorted sets, member = stream id, score =
--       when it must have ended, on Redis's clock)
-- ARGV: 1 stream id, 2 seconds it may last, 3 the flow's cap, 4 the key's cap
-- Returns 1 (admitted and counted), -1 (the flow has its cap), -2 (the key has its cap)

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lasts = tonumber(ARGV[2])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
if redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
if redis.call("ZCARD", KEYS[2]) >= tonumber(ARGV[4]) then
  return -2
end
for i = 1, 2 do
  redis.call("ZADD", KEYS[i], now + lasts, ARGV[1])
  redis.call("EXPIRE", KEYS[i], math.ceil(lasts) + 60)
end
return 1
