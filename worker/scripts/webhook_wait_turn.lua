-- A due delivery found no slot (its endpoint has as many attempts in flight as it may, or the worker's
-- slots for its tenant are taken): it is given a turn behind the endpoint's other waiting deliveries,
-- `spacing` seconds after the last one's (about the time one more attempt takes to end), and its task
-- comes back then, not before. A dead endpoint's backlog of thousands thus costs one look per turn,
-- not one per delivery per second. A copy of the task that comes before its turn keeps that turn.
--
-- KEYS: 1 the endpoint's waiting deliveries (sorted set, by turn), 2 deliveries due (sorted set)
-- ARGV: 1 delivery id, 2 spacing (s), 3 seconds past its turn a task may take (its attempt's lease)
-- Returns seconds until the delivery's turn

local waiting, due, delivery_id = KEYS[1], KEYS[2], ARGV[1]
local spacing, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
-- turns long past belong to deliveries that went on (or away) without saying so
redis.call("ZREMRANGEBYSCORE", waiting, "-inf", now - lease)
local mine = tonumber(redis.call("ZSCORE", waiting, delivery_id) or "0")
if mine > now then
  return tostring(mine - now)
end
local last = redis.call("ZRANGE", waiting, -1, -1, "WITHSCORES")
local turn = math.max(now, tonumber(last[2] or now)) + spacing
redis.call("ZADD", waiting, turn, delivery_id)
redis.call("PEXPIREAT", waiting, math.ceil((turn + lease) * 1000))
-- the dispatcher must not take it for lost meanwhile
redis.call("ZADD", due, "XX", "GT", turn + lease, delivery_id)
return tostring(turn - now)
