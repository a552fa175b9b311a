-- Move a user's read position in a room forward, never back (requests can arrive out of order:
-- a later one from another device, a retry of an older one).
--
-- KEYS[1] the user's read positions (chat:{user:<name>}:reads): room -> id
-- ARGV[1] room name
-- ARGV[2] the id read up to (<ms>-<seq>)
--
-- Returns the stored position after the call, and 1 if it moved (else 0).

local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local ms, seq = parts(stored)
  local new_ms, new_seq = parts(ARGV[2])
  if new_ms < ms or (new_ms == ms and new_seq <= seq) then
    return {stored, 0}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {ARGV[2], 1}
