-- Renew the leases of streams a worker still holds (see acquire_stream.lua).
--
-- KEYS[1] the user's leases (chat:user-streams:<user>)
-- ARGV[1] lease length in ms
-- ARGV[2..] the ids of this worker's leases for the user

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- First a write that can only free memory: a full Redis (maxmemory) refuses a script
-- whose first write may grow it, and renewals must go on then, or every lease would run
-- out and the per-user cap with them. The writes after it replace scores in place.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
