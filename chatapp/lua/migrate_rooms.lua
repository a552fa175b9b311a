-- Move room names from the set that releases before this one kept (chat:rooms)
-- into the sorted index, and make sure the default room is listed. Idempotent:
-- every worker runs it at start, so a room an old worker created during a
-- rolling restart is picked up by the next new one.
--
-- KEYS[1] the old set of names (deleted once copied)
-- KEYS[2] the room index (sorted set, scores 0)
-- ARGV[1] the default room

redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    redis.call('ZADD', KEYS[2], 'NX', 0, name)
  end
  redis.call('DEL', KEYS[1])
end
return redis.call('ZCARD', KEYS[2])
