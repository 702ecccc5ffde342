#!lua flags=allow-oom
-- Outbox entries relayed to one channel's stream (Redis Cluster), each exactly once.
--
-- The apply script appended the notifications of applied changes to the outbox of their
-- row's slot (lua/apply.lua, the O op); this script runs in the channel's slot and appends
-- to the channel's stream only the entries newer than the last one relayed from that
-- outbox, recorded in the progress hash beside the stream. A relay that crashed after this
-- call, a second relay of the same entries and the sweep after a restart send nothing twice.
--
-- Flagged allow-oom: it runs while Redis is out of memory, as the apply script's
-- invalidations do, which append on one server to the channel's stream directly. What it
-- writes is bounded as theirs is: the stream by MAXLEN, the progress hash by one field per
-- outbox; the outbox it empties (trimmed after) would otherwise grow while Redis is full.
--
-- KEYS: the channel's stream, the channel's progress hash (cdc_cache.core.keys).
-- ARGV: the outbox's name (the progress field), maxlen of the stream, the progress hash's
--   lifetime ms, check ('1'; '0' only to prove the check matters), then per entry in id
--   order: its outbox id, its payload.
-- Returns the number of entries appended.

local found = redis.call('TYPE', KEYS[1])['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE cdc-relay: ' .. KEYS[1] .. ' holds a ' .. found .. ', not a stream')
end

local function parsed(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function newer(id, than)
  if not than then return true end
  local ms, seq = parsed(id)
  local last_ms, last_seq = parsed(than)
  return ms > last_ms or (ms == last_ms and seq > last_seq)
end

local last = redis.call('HGET', KEYS[2], ARGV[1])
local check = ARGV[4] == '1'
local appended = 0
for i = 5, #ARGV, 2 do
  if not check or newer(ARGV[i], last) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'p', ARGV[i + 1])
    last = ARGV[i]
    appended = appended + 1
  end
end
if appended > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], last)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return appended
