-- A new flow's Step 1 is over (its flow created, which reserved what it still needs, or refused): the
-- calls its admission reserved are given back.
--
-- KEYS: 1 admissions zset (member "<calls reserved>:<flow id>"), 2 calls the flows under way still need
-- ARGV: 1 the admission member
-- Returns 1 when the admission was held, else 0

if redis.call("ZREM", KEYS[1], ARGV[1]) == 1 then
  redis.call("DECRBY", KEYS[2], tonumber(string.match(ARGV[1], "^(%d+):")))
  return 1
end
return 0
