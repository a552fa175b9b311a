-- Store a new login's session and index it under its user, atomically, so no
-- session can ever exist outside the index that logout-everywhere, password
-- changes, kicks and bans walk (end_sessions.lua is atomic too, so the two
-- serialize: a kick either sees this session or runs before it exists).
--
-- KEYS[1] the new session (chat:session:<sid>)
-- KEYS[2] the user's session index, a sorted set sid -> login time in ms
-- KEYS[3] the user's account record
-- KEYS[4] the user's ban marker
-- ARGV[1] the serialized session
-- ARGV[2] its lifetime in seconds
-- ARGV[3] its sid
-- ARGV[4] the account record as it was when the password was checked
-- ARGV[5] the session key prefix
-- ARGV[6] login time in ms
-- ARGV[7] most sessions one user keeps (the oldest are ended past it)
--
-- Returns -1 if the record changed since the check (password changed, account
-- gone), -2 if the user was banned meanwhile, else the list of sids ended to
-- stay within the cap (their streams are told over the control channel).

if redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return -1
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -2
end
if redis.call('TYPE', KEYS[2])['ok'] == 'set' then  -- the plain set of earlier releases
  local old = redis.call('SMEMBERS', KEYS[2])
  redis.call('DEL', KEYS[2])
  for _, sid in ipairs(old) do
    redis.call('ZADD', KEYS[2], 0, sid)
  end
end
-- Forget sessions that expired by themselves.
for _, sid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('EXISTS', ARGV[5] .. sid) == 0 then
    redis.call('ZREM', KEYS[2], sid)
  end
end
local ended = {}
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[7]) + 1
if excess > 0 then
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
    redis.call('DEL', ARGV[5] .. sid)
    redis.call('ZREM', KEYS[2], sid)
    table.insert(ended, sid)
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
return ended
