-- A finished check of an account's connections, applied: for each connection, what Oktopost listed
-- (valid, invalid) or did not list (gone). A status that changes changes with its event, in this one
-- step, so each change is reported once however many processes check; every connection checked gets
-- `checked_at`. Fenced: nothing happens unless the check still holds the account's lock.
--
--! include connection_record
--
-- KEYS: 1 the check lock, 2 the all-events stream, 3 the account's connections set, 4 the connection counts
-- ARGV: 1 the check's fence, 2 checked_at (ISO time), 3 when the check began reading (ms, Redis's
--       clock): a connection made by a flow after that is left alone (the listing may predate it)
--       4 the all-events channel, 5 the connection channels' prefix, 6 ms the stream keeps an event,
--       7.. per connection, 6 values: tenant, id, "valid" | "invalid" | "gone", the tenant's connections
--       hash, the tenant's order zset, the tenant's channel; then one event id each, in the same order
-- Returns {"fenced"} | {"ok", changes}

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return {"fenced"}
end
local at, began = ARGV[2], tonumber(ARGV[3])
local per = 6
local count = math.floor((#ARGV - 6) / (per + 1))
local changes = 0
for n = 0, count - 1 do
  local i = 7 + n * per
  local tenant, id, seen, hash, order, channel = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local event_id = ARGV[7 + count * per + n]
  local route = {stream = KEYS[2], oldest_ms = now_ms - tonumber(ARGV[6]), all = ARGV[4], tenant = channel,
                 connection_prefix = ARGV[5]}
  local stored = redis.call("HGET", hash, id)
  local record = stored and cjson.decode(stored) or nil
  if record == nil then
    redis.call("SREM", KEYS[3], tenant .. ":" .. id)
  elseif record._deleting == nil and (record._touched or 0) <= began then
    if seen == "gone" then
      count_connection(KEYS[4], record._account, record.status, -1)
      redis.call("HDEL", hash, id)
      redis.call("ZREM", order, id)
      redis.call("SREM", KEYS[3], tenant .. ":" .. id)
      record.checked_at = at
      emit_connection_event(route, connection_event("connection.deleted", record, tenant, event_id, at, "upstream"), id)
      changes = changes + 1
    else
      record.checked_at = at
      if record.status ~= seen then
        count_connection(KEYS[4], record._account, record.status, -1)
        count_connection(KEYS[4], record._account, seen, 1)
        record.status, record.status_changed_at = seen, at
        local kind = seen == "valid" and "connection.recovered" or "connection.invalid"
        emit_connection_event(route, connection_event(kind, record, tenant, event_id, at), id)
        changes = changes + 1
      end
      redis.call("HSET", hash, id, connection_json(record))
    end
  end
end
return {"ok", changes}
