-- Count one more against a per-user cap, atomically: two creations racing for the last
-- place can't both get it.
--
-- KEYS[1] the counter
-- ARGV[1] the cap
--
-- Returns the new count, or -1 if the cap is reached.

if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return -1
end
return redis.call('INCR', KEYS[1])
