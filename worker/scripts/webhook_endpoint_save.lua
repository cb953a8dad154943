-- A webhook endpoint registered or changed for a tenant (webhook_endpoint_delete.lua removes one): its hash and the tenant's index
-- together. A new endpoint's creation time is read here, in the same step, so that no event appended
-- meanwhile is older than it and yet missing from its deliveries.
--
-- KEYS: 1 the endpoint's hash, 2 the tenant's endpoints, 3 every tenant's endpoints (sorted sets)
-- ARGV: 1 endpoint id, 2 what to do:
--         "save"   3.. field, value pairs: a new endpoint
--         "update" 3.. field, value pairs (a field with the value "" is removed): an existing endpoint
--         "rotate" 3 the new secret, 4 seconds the old secret still signs beside it
--         "enable" (after it was disabled: its failing streak starts again)
-- Returns save: the endpoint's creation time (epoch seconds, a string); otherwise 1 | 0 (no such
-- endpoint: nothing changed)

local endpoint, index, endpoint_id, action = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if action == "save" then
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
end
if redis.call("EXISTS", endpoint) == 0 then
  return 0
end
if action == "rotate" then
  local old = redis.call("HGET", endpoint, "secret")
  redis.call("HSET", endpoint, "secret", ARGV[3], "previous_secret", old,
             "previous_until", tostring(now + tonumber(ARGV[4])))
  return 1
end
if action == "enable" then
  redis.call("HSET", endpoint, "status", "enabled")
  redis.call("HDEL", endpoint, "disabled_at", "failing_since")
  return 1
end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == "" then
    redis.call("HDEL", endpoint, ARGV[i])
  else
    redis.call("HSET", endpoint, ARGV[i], ARGV[i + 1])
  end
end
return 1
