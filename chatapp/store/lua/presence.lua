-- Presence of one room, kept consistent across every worker and host.
--
-- Each open stream (or a long-polling client) is a "connection" in a sorted
-- set, scored by the time it expires; a hash counts live connections per user.
-- A user joins when their first connection appears and leaves when their last
-- one is removed or expires, so a worker that dies (SIGKILL) leaves no ghost:
-- its connections expire and the next sweep, run by any worker with readers in
-- the room, announces the leave.
--
-- Join and leave are live-only: published on the room's channel as
-- {"type":"presence",...} (never stored). A reader that reconnects reloads the
-- list (GET /api/rooms/<room>/presence) instead of replaying them.
--
-- KEYS[1] connections zset   chat:{room}:presence
-- KEYS[2] user counts hash    chat:{room}:presence-users
-- KEYS[3] room channel        chat:{room}:live
-- ARGV[1] op: "join" | "leave" | "tick"
-- ARGV[2] expiry (ms from now) for join/tick refreshes; linger (ms) for leave
-- ARGV[3] room name
-- ARGV[4..] connection members "<user>:<connection id>"
--
-- Returns the room's online users, sorted.

-- Redis's clock, not the callers': hosts may disagree about the time.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])

local function announce(user, state)
  -- Built by hand: it must start with {"type": (that is how a hub tells it from a message).
  redis.call('PUBLISH', KEYS[3], '{"type":"presence","room":' .. cjson.encode(ARGV[3])
    .. ',"user":' .. cjson.encode(user) .. ',"state":"' .. state .. '"}')
end

local function user_of(member)
  return string.match(member, '^([^:]+):')
end

local function drop(member)
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local user = user_of(member)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      announce(user, 'leave')
    end
  end
end

local function add(member)
  if redis.call('ZADD', KEYS[1], now + ttl, member) == 1 then
    if redis.call('HINCRBY', KEYS[2], user_of(member), 1) == 1 then
      announce(user_of(member), 'join')
    end
  end
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  drop(member)
end

local op = ARGV[1]
for i = 4, #ARGV do
  if op == 'leave' then
    -- Linger: a reconnect within the grace period keeps the user present,
    -- so flapping connections don't spam join/leave.
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
    end
  else
    add(ARGV[i])  -- a join, or a refresh (a connection swept meanwhile joins again)
  end
end

local users = redis.call('HKEYS', KEYS[2])
table.sort(users)
return users
