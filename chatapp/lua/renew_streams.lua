-- Renew the leases of streams a worker still holds (see acquire_stream.lua).
--
-- KEYS[1] the user's leases (chat:user-streams:<user>)
-- ARGV[1] lease length in ms
-- ARGV[2..] the ids of this worker's leases for the user

local time = redis.call('TIME')
local until_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
