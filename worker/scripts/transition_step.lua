-- The body of a flow's transition as a function, `transition(KEYS, ARGV, read)`: scripts/transition.lua
-- runs it with its own KEYS and ARGV (its header documents them, and the answers), and
-- scripts/callback_claim.lua with the ones it builds after reading the flow, and that flow as `read`
-- (field -> value), which the transition then does not read again.

--! include connection_record

local function transition(KEYS, ARGV, read)
  local flow, stream, deadlines, token_key, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local reserved = KEYS[6]
  local flow_id, allowed, new_state, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
  local after = ARGV[22] == "after"
  local grants, first_metric, first_field = 0, 0, 23
  if after then
    grants = tonumber(ARGV[23])
    first_metric = 25 + grants
    first_field = first_metric + 2 * tonumber(ARGV[24 + grants])
  end
  local t = redis.call("TIME")
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

  -- the upstream calls a flow in a state still needs: verify (and, for pages and groups, the PUT), the PUT
  local function needs(state, entity_type)
    if state == "awaiting_callback" or state == "verifying" then
      if entity_type == "profile" then
        return 1
      end
      return 2
    end
    if state == "awaiting_selection" or state == "completing" then
      return 1
    end
    return 0
  end

  local old_state, entity_type, seq = nil, nil, 1
  if allowed == "" then
    if redis.call("EXISTS", flow) == 1 then
      local current = redis.call("HMGET", flow, "state", "token_fp")
      return {"conflict", current[1] or "", current[2] or ""}
    end
  else
    local current
    if read then
      current = {read.state, read.token_fp, read.deadline, read.owner, read.entity_type, read.seq}
    else
      current = redis.call("HMGET", flow, "state", "token_fp", "deadline", "owner", "entity_type", "seq")
    end
    old_state, entity_type, seq = current[1], current[5], (tonumber(current[6]) or 0) + 1
    if not current[1] then
      return {"missing"}
    end
    if not string.find(allowed, "," .. current[1] .. ",", 1, true) then
      return {"conflict", current[1], current[2] or ""}
    end
    if ARGV[17] ~= "" and current[4] ~= ARGV[17] then
      return {"fenced", current[1]}
    end
    if ARGV[12] ~= "" and tonumber(current[3] or "0") > now then
      return {"early", current[3]}
    end
  end
  local claim_key = not after and KEYS[8]
  if claim_key then
    local holder = redis.call("GET", claim_key)
    if holder and holder ~= flow_id then
      return {"token_in_use", holder}
    end
  end

  local fields = {"state", new_state, "seq", seq}
  for i = first_field, #ARGV, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == "entity_type" then
      entity_type = ARGV[i + 1]
    end
  end
  redis.call("HSET", flow, unpack(fields))

  local at = string.find(event, '"seq":0,', 1, true)
  event = string.sub(event, 1, at - 1) .. '"seq":' .. seq .. ',' .. string.sub(event, at + 8)

  redis.call("XADD", stream, "*", "event", event)
  local oldest_ms = math.floor(now * 1000) - tonumber(ARGV[19])
  redis.call("XADD", KEYS[7], "MINID", "~", tostring(oldest_ms), "*", "event", event)
  local keep = tonumber(ARGV[7])
  redis.call("EXPIRE", flow, keep)
  redis.call("EXPIRE", stream, keep)

  if ARGV[8] == "-" then
    redis.call("ZREM", deadlines, flow_id)
  elseif ARGV[8] ~= "" then
    redis.call("ZADD", deadlines, ARGV[8], flow_id)
  end
  if ARGV[9] == "-" then
    redis.call("ZREM", leases, flow_id)
  elseif ARGV[9] ~= "" then
    redis.call("ZADD", leases, now + tonumber(ARGV[9]), flow_id)
  end
  if ARGV[10] == "-" then
    redis.call("DEL", token_key)
  elseif ARGV[10] ~= "" then
    redis.call("SET", token_key, ARGV[10], "PX", ARGV[11])
    if claim_key then
      redis.call("SET", claim_key, flow_id, "PX", ARGV[11])
    end
  end

  local delta = needs(new_state, entity_type) - needs(old_state, entity_type)
  if delta ~= 0 and redis.call("INCRBY", reserved, delta) < 0 then
    redis.call("SET", reserved, 0)  -- flows from before the count existed: never below nothing
  end

  redis.call("PUBLISH", ARGV[5], event)
  redis.call("PUBLISH", ARGV[6], event)
  redis.call("PUBLISH", ARGV[18], event)
  if ARGV[20] ~= "" then
    local route = {stream = KEYS[7], oldest_ms = oldest_ms, all = ARGV[6], tenant = ARGV[18],
                   connection_prefix = ARGV[21]}
    connect_credentials(cjson.decode(ARGV[20]), route, math.floor(now * 1000))
  end
  if after then
    for i = 24, 23 + grants do
      redis.call("ZADD", KEYS[8], "XX", now, ARGV[i])
    end
    for i = first_metric, first_field - 1, 2 do
      redis.call("HINCRBYFLOAT", KEYS[9], ARGV[i], ARGV[i + 1])
    end
    return {"ok", seq}
  end
  local parked = KEYS[9]
  if parked and redis.call("ZCARD", parked) > 0 then
    redis.call("ZREM", leases, flow_id)
    redis.call("ZADD", parked, tonumber(ARGV[8]), flow_id)
    redis.call("ZADD", KEYS[10], "NX", now, parked)
    return {"ok", seq}
  end
  if ARGV[13] ~= "" then
    redis.call("LPUSH", ARGV[13], ARGV[14])
    if ARGV[15] ~= "" then
      redis.call("PUBLISH", ARGV[15], ARGV[16])
    end
  end
  return {"ok", seq}
end
