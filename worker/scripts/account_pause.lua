-- Oktopost answered 429: no call is made for the account until the pause ends, by any process.
-- When two processes pause at once, the later end is kept. The end is also kept as the start of the
-- ramp (release_parked.lua): after the pause, parked flows go out gradually, not all at once into a
-- new 429.
--
-- KEYS: 1 the account's pause (its end, epoch seconds on Redis's clock), 2 the workers' metrics hash,
--       3 the account's resume ramp (the same end)
-- ARGV: 1 seconds to pause from now, 2 the metrics hash's field counting the account's pauses,
--       3 seconds the ramp lasts at most after the pause's end
-- Returns {1 if this started a pause (none was in force), the pause's end as a string}

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call("GET", KEYS[1]) or "0")
local entered = 0
if current <= now then
  entered = 1
  redis.call("HINCRBY", KEYS[2], ARGV[2], 1)
end
if current > ends then
  ends = current
end
-- kept a while past its end, so that the one process that notices the end logs it (account_resume.lua)
redis.call("SET", KEYS[1], string.format("%.6f", ends), "PX", math.ceil((ends - now + 3600) * 1000))
redis.call("SET", KEYS[3], string.format("%.6f", ends), "PX", math.ceil((ends - now + tonumber(ARGV[3])) * 1000))
return {entered, string.format("%.6f", ends)}
