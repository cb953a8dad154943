-- Events appended to their tenants' event indexes (one stream per tenant, read by replays and by the
-- dispatcher's catching up), each under the id its all-flows stream entry has, so that a position is
-- the same in both. Idempotent: an entry at or before the index's last one is there already (a batch
-- handled again after a crash), and is passed over. Each index is trimmed by age like the stream.
--
-- KEYS: the event index of each entry's tenant (one key per entry, in the entries' order)
-- ARGV: 1 milliseconds an index keeps an event, then per entry: its all-flows entry id, the event's JSON
-- Returns how many entries were appended

local function parts(entry_id)
  local ms, seq = string.match(entry_id, "^(%d+)-(%d+)$")
  return tonumber(ms), tonumber(seq)
end

local t = redis.call("TIME")
local oldest = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1]))
local added = 0
for i, index in ipairs(KEYS) do
  local entry_id = ARGV[2 * i]
  local last = redis.call("XREVRANGE", index, "+", "-", "COUNT", 1)
  local new = true
  if #last > 0 then
    local last_ms, last_seq = parts(last[1][1])
    local ms, seq = parts(entry_id)
    new = ms > last_ms or (ms == last_ms and seq > last_seq)
  end
  if new then
    redis.call("XADD", index, "MINID", "~", oldest, entry_id, "event", ARGV[2 * i + 1])
    added = added + 1
  end
end
return added
