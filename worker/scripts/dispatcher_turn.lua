-- The webhook dispatcher's turn: one worker process at a time reads the all-flows stream for webhooks,
-- from a cursor kept in an internal key (not a consumer group on the public stream, which subscribers'
-- XACK could reach). A process holds the turn while it renews it; one that stops lets it lapse.
--
-- KEYS: 1 the turn (string: the holder's name, with a TTL), 2 the cursor (string: the last entry id
--       dispatched)
-- ARGV: 1 the asking process's name, 2 milliseconds the turn lasts, 3 "" (take or renew the turn) or an
--       entry id (also move the cursor to it: only the holder may)
-- Returns {1, cursor} while the asker holds the turn (the cursor before any move; "0" when none), else
--       {0, ""}

local holder = redis.call("GET", KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, ""}
end
redis.call("SET", KEYS[1], ARGV[1], "PX", tonumber(ARGV[2]))
local cursor = redis.call("GET", KEYS[2]) or "0"
if ARGV[3] ~= "" then
  redis.call("SET", KEYS[2], ARGV[3])
end
return {1, cursor}
