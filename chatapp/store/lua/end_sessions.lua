-- End every session of a user (logout everywhere, password change, kick, ban)
-- atomically with respect to start_session.lua.
--
-- KEYS[1] the user's session index (a sorted set, or the plain set of earlier releases)
-- ARGV[1] the session key prefix
--
-- Returns how many sessions were live.

local kind = redis.call('TYPE', KEYS[1])['ok']
local sids
if kind == 'zset' then
  sids = redis.call('ZRANGE', KEYS[1], 0, -1)
elseif kind == 'set' then
  sids = redis.call('SMEMBERS', KEYS[1])
else
  return 0
end
local live = 0
for _, sid in ipairs(sids) do
  live = live + redis.call('DEL', ARGV[1] .. sid)
end
redis.call('DEL', KEYS[1])
return live
