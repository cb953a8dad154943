-- Shared by webhook_endpoint_disable.lua and webhook_endpoint_delete.lua (pulled in by `--! include`):
-- an endpoint's deliveries not over yet end `failed` at once, out of every set that counts them as
-- pending (deliveries due, pending, the tenant's pending, the flow's order); an attempt in flight owns
-- nothing any more, so its end is fenced out. Returns how many it failed.
local function fail_pending(listed, due, pending, tenant_pending, delivery_prefix, order_prefix, keep)
  local failed = 0
  for _, delivery_id in ipairs(redis.call("ZRANGE", listed, 0, -1)) do
    local delivery = delivery_prefix .. delivery_id
    local fields = redis.call("HMGET", delivery, "status", "flow_id")
    if fields[1] == "pending" then
      redis.call("HSET", delivery, "status", "failed", "next_attempt_at", "")
      redis.call("HDEL", delivery, "owner", "owner_until")
      redis.call("EXPIRE", delivery, keep)
      redis.call("ZREM", due, delivery_id)
      redis.call("ZREM", pending, delivery_id)
      redis.call("ZREM", tenant_pending, delivery_id)
      if fields[2] and fields[2] ~= "" then
        redis.call("ZREM", order_prefix .. fields[2], delivery_id)
      end
      failed = failed + 1
    end
  end
  return failed
end
