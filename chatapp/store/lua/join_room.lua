-- Join a room within the cap, atomically: two joins racing for the last free
-- place can't both get it.
--
-- KEYS[1] the user's memberships, a hash of room name to the id the room's stream starts after
-- ARGV[1] room name
-- ARGV[2] the room's newest id now (the join point)
-- ARGV[3] most rooms one user may be in
--
-- Returns the join point: the stored one if already a member (a repeated join changes
-- nothing), ARGV[2] if joined now; or -1 if the cap is reached. The field "." marks the
-- hash as set up (an account with it left every room; one without it predates
-- memberships and starts in the default room).

local at = redis.call('HGET', KEYS[1], ARGV[1])
if at then
  return at
end
local count = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '.')
if count >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], '.', '1')
return ARGV[2]
