-- Take one of a user's stream slots, counted across every worker and host.
--
-- Each open stream (or waiting long-poll) holds a lease: a member of the user's
-- sorted set scored by when it runs out. The hub that holds the stream renews
-- it (renew_streams.lua); a worker that dies stops renewing, so its leases run
-- out by themselves and the count heals without anyone cleaning up.
--
-- KEYS[1] the user's leases (chat:user-streams:<user>)
-- ARGV[1] the new lease's id
-- ARGV[2] lease length in ms
-- ARGV[3] most streams the user may hold
--
-- Returns 1 if taken, 0 if the user holds as many as they may.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])  -- the key goes with its last lease
return 1
