-- Shared by the steps that change connections (included, not a step of its own): a connection's JSON
-- record, the lifecycle event made from it, and where that event goes.
--
-- A record is the connection as GET /v1/connections/{id} answers it, plus internal fields named with a
-- leading "_" (`_account`: the Oktopost account it lives in; `_touched`: when a flow last connected it,
-- in ms on Redis's clock; `_deleting`: when its deletion was asked for), which never leave Redis.

-- Lua's cjson writes an empty table as {}: the one array a record holds is put right.
local function connection_json(value)
  local text = cjson.encode(value)
  return (string.gsub(text, '"references":{}', '"references":[]'))
end

-- the record without its internal fields, as callers see it
local function public_connection(record)
  local shown = {}
  for name, value in pairs(record) do
    if string.sub(name, 1, 1) ~= "_" then
      shown[name] = value
    end
  end
  return shown
end

-- `kind`: connection.invalid | connection.recovered | connection.deleted; `reason` only for deleted
local function connection_event(kind, record, tenant, event_id, at, reason)
  local data = {connection = public_connection(record)}
  if reason then
    data.reason = reason
  end
  local reference = record.references[1]
  return connection_json({
    v = 1, id = event_id, type = kind, at = at, tenant = tenant, connection_id = record.id,
    network = record.network, entity_type = record.entity_type,
    reference = reference == nil and cjson.null or reference, data = data,
  })
end

-- how many connections each account has with each status: `counts` hash, "{account}|{status}" fields
local function count_connection(counts, account, status, delta)
  redis.call("HINCRBY", counts, (account or "") .. "|" .. status, delta)
end

-- `route`: {stream = the all-events stream, oldest_ms = the trim point, all = the all-events channel,
--           tenant = the tenant's channel, connection_prefix = the connection channels' prefix}
local function emit_connection_event(route, event, connection_id)
  redis.call("XADD", route.stream, "MINID", "~", tostring(route.oldest_ms), "*", "event", event)
  redis.call("PUBLISH", route.all, event)
  redis.call("PUBLISH", route.tenant, event)
  redis.call("PUBLISH", route.connection_prefix .. connection_id, event)
end

-- A completed flow's credentials become connections of its tenant (transition.lua, in the same step as
-- connection.completed). `made` (JSON): {"tenant", "account", "flow_id", "reference" (or null),
-- "entity_type", "at", "hash", "order", "account_set", "accounts", "counts", "deleting" (the deletions
-- under way), "credentials": [{"id", "name", "display_name", "status", "network", "event_id"}]}. A
-- credential connected again keeps its connection: its reference joins `references`, it takes the new
-- status (an event when that status changes), and a deletion of it still asked for is called off (the
-- deletion's task then calls nothing; one whose call was under way keeps the connection, for the next
-- health check to settle: connection_delete.lua).
local function connect_credentials(made, route, now_ms)
  for _, credential in ipairs(made.credentials) do
    local stored = redis.call("HGET", made.hash, credential.id)
    local record = stored and cjson.decode(stored) or nil
    local status = string.lower(credential.status) == "valid" and "valid" or "invalid"  -- as records.status_of
    local changed_from = nil
    if record == nil then
      record = {id = credential.id, connected_at = made.at, status_changed_at = made.at, checked_at = cjson.null,
                references = {}, status = status}
      count_connection(made.counts, made.account, status, 1)
    elseif record.status ~= status then
      changed_from = record.status
      record.status_changed_at = made.at
      count_connection(made.counts, record._account, record.status, -1)
      count_connection(made.counts, made.account, status, 1)
    end
    record.status = status
    record.network, record.entity_type = credential.network, made.entity_type
    record.name, record.display_name = credential.name, credential.display_name
    record.flow_id, record._account, record._touched = made.flow_id, made.account, now_ms
    if record._deleting ~= nil then
      record._deleting = nil
      redis.call("ZREM", made.deleting, made.tenant .. ":" .. credential.id)
    end
    if made.reference ~= cjson.null and made.reference ~= nil then
      local known = false
      for _, reference in ipairs(record.references) do
        known = known or reference == made.reference
      end
      if not known then
        record.references[#record.references + 1] = made.reference
      end
    end
    redis.call("HSET", made.hash, credential.id, connection_json(record))
    redis.call("ZADD", made.order, 0, credential.id)
    redis.call("SADD", made.account_set, made.tenant .. ":" .. credential.id)
    redis.call("SADD", made.accounts, made.account)
    if changed_from then
      local kind = status == "valid" and "connection.recovered" or "connection.invalid"
      emit_connection_event(route, connection_event(kind, record, made.tenant, credential.event_id, made.at),
        credential.id)
    end
  end
end
