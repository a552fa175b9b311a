-- Create a room within the caps, atomically: two creators racing for the last
-- free slot can't both get it.
--
-- KEYS[1] the room index, a sorted set of names (all scores 0, so it pages by name)
-- KEYS[2] how many rooms this user has created (a counter)
-- ARGV[1] room name
-- ARGV[2] most rooms in total
-- ARGV[3] most rooms one user may create
--
-- Returns 0 if the room exists, 1 if created, -1 if the server is full, -2 if the user's quota is used.

if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return -1
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  return -2
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('INCR', KEYS[2])
return 1
