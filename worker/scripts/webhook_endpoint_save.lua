-- A webhook endpoint registered (or removed) for a tenant: its hash and the tenant's index together,
-- its creation time read here, in the same step, so that no event appended meanwhile is older than it
-- and yet missing from its deliveries.
--
-- KEYS: 1 the endpoint's hash, 2 the tenant's endpoints, 3 every tenant's endpoints (sorted sets)
-- ARGV: 1 endpoint id, 2 "save" or "delete", 3.. field, value pairs (save)
-- Returns the endpoint's creation time (epoch seconds, a string: save) | 1 | 0 (delete: no such endpoint)

local endpoint, index, endpoint_id = KEYS[1], KEYS[2], ARGV[1]
if ARGV[2] == "delete" then
  redis.call("ZREM", index, endpoint_id)
  redis.call("ZREM", KEYS[3], endpoint_id)
  return redis.call("DEL", endpoint)
end
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
-- to the millisecond, as the stream numbers its entries: an event of the same millisecond counts as newer
local created = string.format("%.3f", math.floor(now * 1000) / 1000)
local fields = {"created_at", created}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call("HSET", endpoint, unpack(fields))
redis.call("ZADD", index, tonumber(created), endpoint_id)
redis.call("ZADD", KEYS[3], tonumber(created), endpoint_id)
return created
