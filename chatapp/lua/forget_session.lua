-- Take one session out of its user's index (a sorted set, or the plain set of
-- earlier releases: the first login since the upgrade converts it).
--
-- KEYS[1] the user's session index
-- ARGV[1] the sid

if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return redis.call('ZREM', KEYS[1], ARGV[1])
