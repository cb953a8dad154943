-- A callback's read and, when nothing stands in its way, its claim, in one call: the shim's usual
-- callback (one well-formed token, for a flow awaiting it, in time, from a browser that needs no
-- confirmation) costs one round trip instead of a read and then a claim. Whenever the flow is not in that
-- case, nothing is changed and the flow is answered as read, for the shim to decide (a repeat, a late
-- callback, a confirmation page, another tenant's rules): the same decisions the shim makes on a flow it
-- read itself (api_shim/routes/callbacks.py), so either way a callback comes to the same thing.
--
-- KEYS: the claim's KEYS as scripts/transition.lua documents them (1 to 10), except that KEYS[6] (the
--       account's reserved calls) and KEYS[9] (its parked flows) name the account by ARGV[1], replaced
--       here by the flow's account
-- ARGV: 1 the marker standing for the flow's account or tenant in the names it is part of
--       2 the account of a flow that names none, 3 the tenant of a flow that names none
--       4 now, on the shim's clock of Redis's time (the deadline is compared with it, as the shim does)
--       5 the fingerprint of the start cookie the browser presented ("" without one)
--       6 ",a,b,": the tenants that require their flows' start_url to be opened
--       7 the fingerprint of the cookie the browser is given, kept when the flow is led through pages
--       8 ",x,y,": the flows' `ui` values whose browsers are led through the shim's pages
--       9 the event after its envelope: `"data":...}`, ARGV[13] (the transition's event) holding what comes
--         before it, up to `"at":"...",`; the envelope's network, entity_type, reference and tenant are
--         the flow's own
--      10 onwards: the claim's ARGV as scripts/transition.lua documents them, except that the tenant's
--         channel (its ARGV[18]) names the tenant by ARGV[1]
-- Returns {"missing"} | {"read", flow hash} | {"claimed", flow hash before the claim, transition's answer}

--! include transition_step

local OWN = 9
local marker = ARGV[1]

local flat = redis.call("HGETALL", KEYS[1])
if #flat == 0 then
  return {"missing"}
end
local flow = {}
for i = 1, #flat, 2 do
  flow[flat[i]] = flat[i + 1]
end

local function given(value, default)
  if value == nil or value == "" then
    return default
  end
  return value
end

local tenant = given(flow.tenant, ARGV[3])
local start_fp = flow.start_fp or ""
local bound = start_fp ~= "" or string.find(ARGV[6], "," .. tenant .. ",", 1, true) ~= nil
local started_here = start_fp ~= "" and start_fp == ARGV[5]
if flow.state ~= "awaiting_callback" or tonumber(flow.deadline) - tonumber(ARGV[4]) <= 0
    or (bound and not started_here) then
  return {"read", flat}
end

local function named(template, value)
  local at = string.find(template, marker, 1, true)
  return string.sub(template, 1, at - 1) .. value .. string.sub(template, at + #marker)
end

local account = given(flow.account, ARGV[2])
local keys = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], named(KEYS[6], account), KEYS[7], KEYS[8],
              named(KEYS[9], account), KEYS[10]}
local argv = {}
for i = OWN + 1, #ARGV do
  argv[#argv + 1] = ARGV[i]
end
local reference = given(flow.reference, nil)
argv[4] = argv[4] .. '"network":' .. cjson.encode(flow.network) .. ',"entity_type":'
  .. cjson.encode(flow.entity_type) .. ',"reference":' .. (reference and cjson.encode(reference) or "null")
  .. ',"tenant":' .. cjson.encode(tenant) .. ',' .. ARGV[9]
argv[18] = named(argv[18], tenant)
if ARGV[7] ~= "" and string.find(ARGV[8], "," .. (flow.ui or "") .. ",", 1, true) then
  argv[#argv + 1] = "browser_fp"
  argv[#argv + 1] = ARGV[7]
end
return {"claimed", flat, transition(keys, argv, flow)}
