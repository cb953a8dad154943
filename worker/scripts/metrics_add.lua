-- A task's metric observations, added in one call when the task ends.
--
-- KEYS: 1 the metrics hash
-- ARGV: field, amount, field, amount, ...
-- Returns 1

for i = 1, #ARGV, 2 do
  redis.call("HINCRBYFLOAT", KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
