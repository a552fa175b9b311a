-- What one user may do in one room, read at one instant (chatapp.accounts.access).
--
-- KEYS[1] the room's record (chat:{room}:meta)
-- KEYS[2] the room's members (chat:{room}:members)
-- KEYS[3] the room's stream (chat:{room}:log)
-- KEYS[4] the room's acknowledged marker (chat:{room}:acked)
-- ARGV[1] the user (lowercase)
--
-- Returns {kind, archived, title, role, newest id, acknowledged id} ('' for what is absent).
-- The newest id is read with the role: a reader that starts there meets every later
-- change of the role in the log (invariant 16).

local record = redis.call('HMGET', KEYS[1], 'kind', 'archived', 'title')
local role = redis.call('HGET', KEYS[2], ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
return {record[1] or '', record[2] or '', record[3] or '', role or '',
        newest[1] and newest[1][1] or '', redis.call('GET', KEYS[4]) or ''}
