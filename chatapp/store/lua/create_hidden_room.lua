-- Create a private room or a DM with its members, once (a DM's id is its members': whoever
-- starts it, the same conversation).
--
-- KEYS[1] the room's record (chat:{room}:meta)
-- KEYS[2] the room's members (chat:{room}:members)
-- ARGV[1] kind ('private' or 'dm'), ARGV[2] title, ARGV[3] owner ('' for a DM),
-- ARGV[4] created (ms), ARGV[5] how many members follow,
-- then ARGV[6..] member, role pairs
--
-- Returns 1 if created, 0 if it existed.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'title', ARGV[2], 'owner', ARGV[3], 'created', ARGV[4])
local count = tonumber(ARGV[5])
for i = 0, count - 1 do
  redis.call('HSET', KEYS[2], ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
return 1
