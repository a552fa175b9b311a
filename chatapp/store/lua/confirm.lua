-- A message is on enough replicas (WAIT said so): record it and tell the hubs
-- (docs/DESIGN.md, invariant 11).
--
-- Replication is one ordered log, so once an entry is acknowledged every entry
-- written before it is too: hubs hold the messages they receive until a
-- confirmation releases them, in the order they arrived. The marker bounds what
-- reads of the room's log may return.
--
-- KEYS[1] the room's acknowledged-id marker (chat:{room}:acked)
-- KEYS[2] the room's channel (chat:{room}:live)
-- ARGV[1] the acknowledged id
--
-- Returns 1 if the marker moved, 0 if it was already there.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local moved = 0
local current = redis.call('GET', KEYS[1])
local ms, seq = parse(ARGV[1])
if current then
  local cms, cseq = parse(current)
  if ms > cms or (ms == cms and seq > cseq) then
    moved = 1
  end
else
  moved = 1
end
if moved == 1 then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[2], '{"acked":"' .. ARGV[1] .. '"}')
return moved
