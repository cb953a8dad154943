-- A browser opened a flow's start_url: the flow, while it awaits its callback, keeps the hash of the
-- cookie that browser was given, unless a browser was bound to it before. Only that browser's callback
-- then claims the flow without a confirmation (api_shim/routes/start.py).
--
-- KEYS: 1 the flow's state hash
-- ARGV: 1 the cookie's fingerprint (SHA-256, hex)
-- Returns "bound" (kept now), "taken" (a browser was bound before) or "not_waiting" (no such flow, or
-- it no longer awaits its callback)

if redis.call("HGET", KEYS[1], "state") ~= "awaiting_callback" then
  return "not_waiting"
end
if redis.call("HSETNX", KEYS[1], "start_fp", ARGV[1]) == 1 then
  return "bound"
end
return "taken"
