-- How many messages a room has after a cursor, up to a cap: the page's unread
-- badge. Counted inside Redis so no message crosses the network.
--
-- KEYS[1] room stream (chat:{room}:log)
-- ARGV[1] cursor (exclusive)
-- ARGV[2] cap

return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
