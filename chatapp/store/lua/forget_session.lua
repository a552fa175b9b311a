-- End one session (logout): delete it and take it out of its user's index in one
-- step, so no failure in between can leave it alive outside the index.
--
-- KEYS[1] the user's session index (a sorted set, or the plain set of earlier releases)
-- KEYS[2] the session
-- ARGV[1] the sid

redis.call('DEL', KEYS[2])
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return redis.call('ZREM', KEYS[1], ARGV[1])
