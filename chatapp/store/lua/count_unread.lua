-- How many messages a room has after a cursor, and how many of them mention a user, up to a
-- cap: the page's badges. Counted inside Redis so no message crosses the network.
--
-- Entries that aren't messages (membership and room changes, edits, deletions: they have a
-- "kind") don't count. A message mentions the user when its "mentions" list (the last field,
-- lowercase names) holds them; in a DM (ARGV[4] = '1') every message from someone else does.
-- Names and kinds are matched as JSON text: a message's own text can't hold an unescaped
-- quote, so it can't forge either.
--
-- KEYS[1] room stream (chat:{room}:log)
-- ARGV[1] cursor (exclusive)
-- ARGV[2] cap
-- ARGV[3] the user (lowercase), or '' to count no mentions
-- ARGV[4] '1' for a DM
--
-- Returns {messages, mentions}, each at most the cap. At most 4 x cap entries are read.

local cap = tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 4 * cap)
local user, dm = ARGV[3], ARGV[4] == '1'
local quoted = '"' .. user .. '"'
local messages, mentions = 0, 0
for _, entry in ipairs(entries) do
  local body = entry[2][2]
  if not string.find(body, '"kind":"', 1, true) then
    messages = messages + 1
    if user ~= '' then
      local mentioned
      if dm then
        local author = string.match(body, '"user":"([^"]*)"')
        mentioned = author and string.lower(author) ~= user
      else
        local list = string.match(body, '"mentions":(%b[])}$')
        mentioned = list and string.find(list, quoted, 1, true)
      end
      if mentioned then
        mentions = mentions + 1
      end
    end
    if messages >= cap then
      break
    end
  end
end
return {messages, math.min(mentions, cap)}
