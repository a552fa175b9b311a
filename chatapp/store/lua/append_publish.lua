-- Save to history and publish, atomically per room (docs/DESIGN.md, invariants 1, 2, 9).
--
-- Running XADD and PUBLISH in one script makes a room's publish order equal to
-- its stream-id order, and a 201 is only sent after the entry is in the stream.
--
-- KEYS[1] room stream (chat:{room}:log)
-- KEYS[2] room channel (chat:{room}:live)
-- KEYS[3] marker set once the stream has been trimmed (chat:{room}:trimmed)
-- KEYS[4] optional idempotency key (chat:{room}:idem:<user>:<key>)
-- KEYS[last] with ARGV[4] = '1' (replica acknowledgement): the room's acknowledged marker
--           (chat:{room}:acked). The first append in that mode records the tail before it,
--           so reads know the older log is readable (invariant 11).
-- ARGV[1] message body: a JSON object without "id" and "ts", e.g. {"room":..,"user":..,"text":..}
-- ARGV[2] stream cap (approximate MAXLEN)
-- ARGV[3] idempotency window in seconds
--
-- Returns {1, message JSON} for a new message, {0, message JSON} for a replay.

-- A message's JSON as the stream holds it: the id and its millisecond part, then the body.
local function message_json(id, body)
  return '{"id":"' .. id .. '","ts":' .. string.match(id, '^%d+') .. ',' .. string.sub(body, 2)
end

local marker = nil
if ARGV[4] == '1' then
  marker = KEYS[#KEYS]
end
local idempotency = KEYS[4]
if idempotency == marker then
  idempotency = nil
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
return {1, message}
