-- Save to history and publish, atomically per room (docs/DESIGN.md, invariants 1, 2, 9, 16).
--
-- Running XADD and PUBLISH in one script makes a room's publish order equal to
-- its stream-id order, and a 201 is only sent after the entry is in the stream.
-- Every entry of a room's log is written here: messages, and the membership and
-- room changes that travel the same way (a removal is an entry, so every reader
-- meets it in order, before any message that follows it: invariant 16). Who may
-- write is decided in the same script, so a removal or an archive can't fall
-- between the check and the append.
--
-- KEYS[1] room stream (chat:{room}:log)
-- KEYS[2] room channel (chat:{room}:live)
-- KEYS[3] marker set once the stream has been trimmed (chat:{room}:trimmed)
-- KEYS[4] the room's record (chat:{room}:meta): kind, archived
-- KEYS[5] the room's members and roles (chat:{room}:members)
-- KEYS[6] a DM's blockers (chat:{room}:blockers)
-- KEYS[7] the room's edited messages (chat:{room}:edits): target id -> JSON
--         {"text", "edited", "entries": [ids of its edit entries]}
-- KEYS[8] optional idempotency key (chat:{room}:idem:<user>:<key>)
-- KEYS[last] with ARGV[4] = '1' (replica acknowledgement): the room's acknowledged marker
--           (chat:{room}:acked). The first append in that mode records the tail before it,
--           so reads know the older log is readable (invariant 11).
-- ARGV[1] the entry's body: a JSON object without "id" and "ts", e.g. {"room":..,"user":..,"text":..}
-- ARGV[2] stream cap (approximate MAXLEN)
-- ARGV[3] idempotency window in seconds
-- ARGV[4] '1' with replica acknowledgement, else '0'
-- ARGV[5] the writer (lowercase username)
-- ARGV[6] what the entry does: 'post' (a message), 'add', 'remove', 'role' (a member, ARGV[7],
--         with the role ARGV[8]), 'title' (ARGV[8]), 'archive' (ARGV[8]: '1' or '0'),
--         'edit' (the message ARGV[7] gets the text ARGV[8]), 'delete' (the message ARGV[7])
-- ARGV[7] the member an 'add', 'remove' or 'role' is about; the message an 'edit' or 'delete' is about
-- ARGV[8] the role, title, archived flag or new text
-- ARGV[9] most members a room may have (for 'add'); most edits of one message (for 'edit')
-- ARGV[10] for 'edit': the oldest message id that may still be edited (its millisecond);
--          for 'delete': '1' if the writer moderates the room (may delete anyone's message)
-- ARGV[11] for 'delete': the room's idempotency key prefix (chat:{room}:idem:), to forget the
--          message's record
--
-- Returns {1, entry JSON} for a new entry, {0, entry JSON} for a replayed message,
-- {0, ''} for a change that changes nothing, or {-1, error code} when refused.

-- An entry's JSON as the stream holds it: the id and its millisecond part, then the body.
local function message_json(id, body)
  return '{"id":"' .. id .. '","ts":' .. string.match(id, '^%d+') .. ',' .. string.sub(body, 2)
end

local marker = nil
if ARGV[4] == '1' then
  marker = KEYS[#KEYS]
end
local idempotency = KEYS[8]
if idempotency == marker then
  idempotency = nil
end
local op, member, value = ARGV[6], ARGV[7], ARGV[8]

local record = redis.call('HMGET', KEYS[4], 'kind', 'archived')
local kind, archived = record[1], record[2]
local restricted = kind == 'private' or kind == 'dm'

-- A message of the log by id, decoded, or nil (no such entry, deleted, or not a message).
local function message_at(id)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then
    return nil
  end
  local body = cjson.decode(found[1][2][2])
  if body['kind'] then
    return nil
  end
  return body
end

local target = nil
if op == 'post' or op == 'edit' or op == 'delete' then
  -- To anyone but a member a private room or a DM doesn't exist.
  if restricted and not redis.call('HGET', KEYS[5], ARGV[5]) then
    return {-1, 'unknown_room'}
  end
  if archived == '1' and op ~= 'delete' then  -- a leaked secret can still be taken out
    return {-1, 'room_archived'}
  end
  if kind == 'dm' and op ~= 'delete' and redis.call('SCARD', KEYS[6]) > 0 then
    return {-1, 'blocked'}
  end
end
if op == 'post' then
  -- checked above
elseif op == 'edit' or op == 'delete' then
  target = message_at(member)
  if not target then
    return {-1, 'unknown_message'}
  end
  local own = string.lower(target['user']) == ARGV[5]
  if op == 'edit' then
    if not own then
      return {-1, 'not_author'}
    end
    if tonumber(string.match(member, '^%d+')) < tonumber(ARGV[10]) then
      return {-1, 'edit_window_passed'}
    end
    local edited = redis.call('HGET', KEYS[7], member)
    if edited and #cjson.decode(edited)['entries'] >= tonumber(ARGV[9]) then
      return {-1, 'edit_limit'}
    end
  elseif not own and ARGV[10] ~= '1' then
    return {-1, 'not_allowed'}
  end
elseif op == 'add' then
  if redis.call('HEXISTS', KEYS[5], member) == 1 then
    return {0, ''}
  end
  if redis.call('HLEN', KEYS[5]) >= tonumber(ARGV[9]) then
    return {-1, 'room_members_full'}
  end
  redis.call('HSET', KEYS[5], member, value)
elseif op == 'remove' then
  if redis.call('HDEL', KEYS[5], member) == 0 then
    return {0, ''}
  end
elseif op == 'role' then
  local role = redis.call('HGET', KEYS[5], member)
  if not role and restricted then
    return {-1, 'not_member'}
  end
  if role == value then
    return {0, ''}
  end
  if value == 'member' and not restricted then
    redis.call('HDEL', KEYS[5], member)  -- a public room lists only its owner and moderators
  else
    redis.call('HSET', KEYS[5], member, value)
  end
elseif op == 'title' then
  if redis.call('HGET', KEYS[4], 'title') == value then
    return {0, ''}
  end
  redis.call('HSET', KEYS[4], 'title', value)
elseif op == 'archive' then
  if (archived or '0') == value then
    return {0, ''}
  end
  redis.call('HSET', KEYS[4], 'archived', value)
else
  return {-1, 'bad_operation'}
end

if idempotency then
  local first = redis.call('GET', idempotency)
  if first then
    if string.sub(first, 1, 1) == '{' then
      return {0, first}  -- a record written by an earlier release: the whole message
    end
    -- The record keeps only the id (a copy of each message for a day would double
    -- what the store holds); the message itself is read back from the stream.
    local entries = redis.call('XRANGE', KEYS[1], first, first)
    if #entries > 0 then
      return {0, message_json(first, entries[1][2][2])}
    end
    -- Trimmed away since: the id still stands, with the retry's own body.
    return {0, message_json(first, ARGV[1])}
  end
end

-- The first write: a store at maxmemory refuses it (noeviction) before anything is written.
if marker and redis.call('EXISTS', marker) == 0 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  redis.call('SET', marker, last[1] and last[1][1] or '0-0')
end
local id = redis.call('XADD', KEYS[1], '*', 'body', ARGV[1])
-- The timestamp is the id's millisecond part, so "ts" never disagrees with the order.
local message = message_json(id, ARGV[1])
redis.call('PUBLISH', KEYS[2], message)

-- Trimming separately from XADD tells us whether anything was dropped, so a
-- reader whose cursor predates the kept log gets an explicit reset (invariant 8).
if redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2]) > 0 then
  redis.call('SET', KEYS[3], '1')
end

if idempotency then
  redis.call('SET', idempotency, id, 'EX', ARGV[3])
end

if op == 'edit' then
  -- The latest text, read by history; the entries, so a deletion can take them out too.
  local edited = redis.call('HGET', KEYS[7], member)
  local entries = edited and cjson.decode(edited)['entries'] or {}
  table.insert(entries, id)
  redis.call('HSET', KEYS[7], member, cjson.encode({text = value, edited = tonumber(string.match(id, '^%d+')),
                                                     entries = entries}))
elseif op == 'delete' then
  -- The text leaves Redis: the message's entry, the entries of its edits, its latest text and
  -- its idempotency record. The ids left behind are gaps a cursor steps over (docs/DESIGN.md).
  redis.call('XDEL', KEYS[1], member)
  local edited = redis.call('HGET', KEYS[7], member)
  if edited then
    for _, entry in ipairs(cjson.decode(edited)['entries']) do
      redis.call('XDEL', KEYS[1], entry)
    end
    redis.call('HDEL', KEYS[7], member)
  end
  if target['client_id'] then
    redis.call('DEL', ARGV[11] .. string.lower(target['user']) .. ':' .. target['client_id'])
  end
end
return {1, message}
