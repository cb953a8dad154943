-- The one check of an account's connections at a time, across every process: a lock holding a fence
-- number, so a check that lost its lock (its process stalled past the lock's life) changes nothing after
-- (connection_check.lua and connection_check_slot.lua compare the fence).
--
-- KEYS: 1 the lock, 2 the fence counter, 3 when the next check is due, 4 the account's pause
-- ARGV: 1 "take" | "renew" | "release", 2 the fence (renew, release), 3 the lock's life in ms,
--       4 (take) seconds between checks
-- Returns take: {"taken", fence, now ms} | {"not_due"} | {"busy"} | {"paused"}
--         renew, release: {"ok"} | {"lost"}

local lock, fence_counter, due, pause = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

if ARGV[1] == "take" then
  if tonumber(redis.call("GET", pause) or "0") > now then
    return {"paused"}  -- a paused account is not checked (nor is its check counted as due and done)
  end
  local next_due = tonumber(redis.call("GET", due) or "0")
  if next_due > now then
    if next_due > now + tonumber(ARGV[4]) then
      -- set under a longer period than this process's (CONNECTION_CHECK_SECONDS lowered since): due a
      -- period from now at the latest, not when the longer period would have ended
      redis.call("SET", due, tostring(now + tonumber(ARGV[4])))
    end
    return {"not_due"}
  end
  if redis.call("EXISTS", lock) == 1 then
    return {"busy"}
  end
  local fence = redis.call("INCR", fence_counter)
  redis.call("SET", lock, fence, "PX", ARGV[3])
  -- due again a period after it starts, whatever its outcome: a failed check is tried next period
  redis.call("SET", due, tostring(now + tonumber(ARGV[4])))
  return {"taken", tostring(fence), tostring(math.floor(now * 1000))}
end
if redis.call("GET", lock) ~= ARGV[2] then
  return {"lost"}
end
if ARGV[1] == "renew" then
  redis.call("PEXPIRE", lock, ARGV[3])
else
  redis.call("DEL", lock)
end
return {"ok"}
