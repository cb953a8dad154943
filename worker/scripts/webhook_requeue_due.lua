-- The deliveries whose task should have shown up long ago (lost with a killed worker, or never sent):
-- each is given a new moment, so that one dispatcher queues its task again, not every dispatcher.
--
-- KEYS: 1 deliveries due (sorted set)
-- ARGV: 1 how many seconds late a delivery is taken up, 2 seconds its task gets before the next take-up,
--       3 at most this many deliveries
-- Returns the delivery ids to queue again

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local late = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[1]), "LIMIT", 0, tonumber(ARGV[3]))
for _, delivery_id in ipairs(late) do
  redis.call("ZADD", KEYS[1], now + tonumber(ARGV[2]), delivery_id)
end
return late
