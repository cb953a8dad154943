-- One transition of a flow, atomically: check the state (and who owns the flow's work), change it, give
-- the event its seq, XADD it to the flow's stream and to the all-flows stream, and PUBLISH it on the
-- flow's, the all-flows and the tenant's channels. Either all of it happens or none of it does. Times are Redis's own (TIME): every process compares on one clock.
--
-- KEYS: 1 flow hash, 2 flow stream, 3 deadlines zset, 4 token key, 5 leases zset
--       6 the calls the flows under way still need, of the account's daily count (a counter kept by
--         the transitions themselves, so admission control reads it in O(1))
--       7 the all-flows event stream (consumer groups read it; trimmed by age)
--       8 (claims only) the token's claim key: one okt token belongs to one flow, whatever URL it comes to
--       9, 10 (claims only, optional) the account's parked zset and the parked accounts zset: when flows
--         of the account already wait for its budget, parked, the claimed flow joins them (scored by its
--         deadline, no lease) instead of queuing a task that would only park it (worker.upstream.parking)
--       8, 9 instead (a task's transition with its aftermath, ARGV[22] "after"): the account's budget
--         window zset and the workers' metrics hash
-- ARGV: 1 flow id
--       2 allowed current states as ",a,b," ("" = the flow must not exist yet)
--       3 new state
--       4 event JSON carrying the placeholder "seq":0,
--       5 flow channel, 6 all-events channel
--       7 seconds to keep the hash and stream after this transition
--       8 deadline: "" keep, "-" drop, else epoch seconds (on Redis's clock) to index
--       9 lease: "" keep, "-" drop, else seconds from now within which the work must show progress
--      10 token: "" keep, "-" delete, else the token to keep for ARGV[11] milliseconds
--      11 token lifetime in milliseconds
--      12 "1": the transition only happens once the flow's deadline has passed; "" otherwise
--      13 "" or a Celery broker list: the transition queues the task that works on the flow (LPUSH ARGV[14])
--      14 that task's message, 15 "" or the channel of its task-sent event, 16 that event
--         (worker/flows/enqueuer.py builds both; the broker list is named here, not in KEYS, as it lives
--         outside the flow's keys: the project assumes one Redis, not a cluster)
--      17 fence: "" or the owner id a task got when it took the flow's work; then the transition only
--         happens while that task still owns the work (a task whose lease lapsed changes nothing)
--      18 the tenant's channel
--      19 milliseconds the all-flows stream keeps an event (older entries are trimmed, approximately)
--      20 "" or (connection.completed) the JSON of the connections it makes: each credential becomes,
--         or updates, a connection of the flow's tenant, with a connection.invalid or .recovered event
--         when that changes an existing one's status (connect_credentials in connection_record.lua,
--         which names the keys it writes: the project assumes one Redis), 21 the connection channels'
--         prefix
--      22 "after" when the task's aftermath comes with the transition (made only if it is), else "":
--         23 g, then g waiter ids of the task's budget grants whose calls answered, each scored in the
--         window by its end, now (what budget_finished.lua does for one); then m, then m field, amount
--         pairs added to the metrics hash (what metrics_add.lua does): the task's end costs no more calls
--      then field, value pairs to store in the flow hash
-- Returns {"ok", seq} | {"missing"} | {"conflict", state, token_fp} | {"early", deadline}
--       | {"token_in_use", flow} | {"fenced", state}

--! include connection_record

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

local old_state, entity_type = nil, nil
if allowed == "" then
  if redis.call("EXISTS", flow) == 1 then
    local current = redis.call("HMGET", flow, "state", "token_fp")
    return {"conflict", current[1] or "", current[2] or ""}
  end
else
  local current = redis.call("HMGET", flow, "state", "token_fp", "deadline", "owner", "entity_type")
  old_state, entity_type = current[1], current[5]
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

local fields = {"state", new_state}
for i = first_field, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == "entity_type" then
    entity_type = ARGV[i + 1]
  end
end
redis.call("HSET", flow, unpack(fields))
local seq = redis.call("HINCRBY", flow, "seq", 1)

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
