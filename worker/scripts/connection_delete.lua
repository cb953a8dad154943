-- A caller's DELETE of a connection, asked for or done.
--
--! include connection_record
--
-- "ask": marks the connection as being deleted (its `_deleting`) and lists it among the deletions under
-- way, once; the caller queues the task that calls Oktopost.
-- "done": Oktopost no longer has the credential: the connection goes, with its connection.deleted event
-- (reason "requested"), in one step; only if its deletion was asked for and it is still there. A flow
-- that connected the credential again meanwhile called the deletion off (connect_credentials): the
-- connection stays, as Oktopost may have taken the flow's call after the DELETE, and a health check
-- that finds it gone upstream ends it then.
--
-- KEYS: 1 the tenant's connections hash, 2 the tenant's order zset, 3 the deletions zset, 4 the all-events
--       stream, 5 the connection counts
-- ARGV: 1 "ask" | "done", 2 tenant, 3 id, 4 (done) event id, 5 (done) at (ISO time), 6 (done) the
--       all-events channel, 7 (done) the tenant's channel, 8 (done) the connection channels' prefix,
--       9 (done) ms the stream keeps an event, 10 (done) the account's connections set
-- Returns ask: "missing" | "deleting" (asked already) | "asked"; done: "missing" | "deleted"

local hash, order, deleting = KEYS[1], KEYS[2], KEYS[3]
local tenant, id = ARGV[2], ARGV[3]
local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.call("HGET", hash, id)
if not stored then
  redis.call("ZREM", deleting, tenant .. ":" .. id)
  return "missing"
end
local record = cjson.decode(stored)
if ARGV[1] == "ask" then
  if record._deleting ~= nil then
    return "deleting"
  end
  record._deleting = now_ms
  redis.call("HSET", hash, id, connection_json(record))
  redis.call("ZADD", deleting, now_ms, tenant .. ":" .. id)
  return "asked"
end
if record._deleting == nil then
  return "missing"
end
count_connection(KEYS[5], record._account, record.status, -1)
redis.call("HDEL", hash, id)
redis.call("ZREM", order, id)
redis.call("ZREM", deleting, tenant .. ":" .. id)
redis.call("SREM", ARGV[10], tenant .. ":" .. id)
local route = {stream = KEYS[4], oldest_ms = now_ms - tonumber(ARGV[9]), all = ARGV[6], tenant = ARGV[7],
               connection_prefix = ARGV[8]}
emit_connection_event(route, connection_event("connection.deleted", record, tenant, ARGV[4], ARGV[5], "requested"), id)
return "deleted"
