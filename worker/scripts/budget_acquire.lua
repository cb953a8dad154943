-- A caller asks the shared upstream budget for a slot, earliest priority first, on Redis's clock.
-- The account's pause (after a 429) and its daily count are honoured before the rate window.
--
-- KEYS: 1 window zset (granted calls scored by their end, or their latest possible end while in flight)
--       2 queue zset (waiters scored by priority), 3 alive zset (waiters scored by when they last asked)
--       4 the account's pause (its end, epoch seconds), 5 calls the flows under way still need (counter)
--       6 admissions zset (new flows' reservations between Step 1 and their creation, scored by expiry;
--         member "<calls reserved>:<flow id>")
--       7 parked zset (flows waiting for the account's budget without a thread, scored by deadline: each
--         one with an earlier deadline than this caller's priority is ahead of it)
-- ARGV: 1 waiter id, 2 priority, 3 limit, 4 period (s), 5 hold (s: the longest the call can take),
--       6 seconds after which a silent waiter is dropped, 7 give up at (epoch seconds)
--       8 calls a day (UTC), "" for no daily count, 9 the prefix of the day's counter (the UTC day
--         number since the epoch is appended; named here, not in KEYS, as the day is read from TIME)
--      10 "" or the admission member of a new flow's Step 1, 11 seconds that admission is held
--      12 "" or the slot a parked flow was released with (worker.upstream.parking): granted while it is still in
--         the window, under this waiter's id, the day's count already taken; named "...:<moment>", it
--         is granted no sooner than that moment (epoch seconds)
-- Returns {"granted", now} | {"wait", seconds to wait before asking again} | {"doomed", least wait}
--       | {"reserved", seconds until the reserved slot (ARGV[12]) frees: ask again then}
--       | {"paused", seconds until the pause ends: it outlasts the give-up time, or ARGV[10] is given}
--       | {"spent", seconds until midnight UTC}


--! include budget_ask

return budget_ask(KEYS, ARGV)
