#!lua flags=allow-oom
-- One cache tag's hash (KEYS[1]): its version and its members (see cdc_cache/sink/tags.py).
-- Flagged allow-oom: an invalidation must land while Redis is out of memory (it writes a
-- version field at most; the keys go through the apply script's allow-oom deletes).
--
-- Field "" holds the tag's version: the encoded position of its newest invalidation, and
-- field "h" its horizon (a Unix minute, 8 digits), after which the sweep removes both: a
-- link op older than the tombstone horizon is not caught up, as a replay that old is not.
-- Every other field is a member, "<cache key>\n<link>": the link is the row that put the
-- key under the tag (empty for an application fill). Its value says what it is:
--   "+<position>"                present, put there by the row's change at that position
--   "-<position><horizon>"       taken out at that position: a tombstone, so older link ops
--                                cannot undo it, until its horizon (a Unix minute, 8 digits)
--   "*<expiry><token>"           put there by the fill holding that token, whose value
--                                expires by that Unix minute (8 digits)
-- Positions are fixed-width strings that sort as the positions they encode.
--
-- ARGV[1] is the op:
--   L member position present lifetime_ms
--                               a link op, gated by the member's position; returns the
--                               tag's version ("" if never invalidated), even when the op
--                               itself was stale or a duplicate, so the caller's catch-up
--                               (delete the key at a newer version) is never lost
--   F member token ttl_ms       a fill's member; returns the tag's version
--   I position cursor count lifetime_ms
--                               a page of an invalidation: raises the version to position
--                               if newer (its horizon lifetime_ms later), returns {next
--                               cursor, member, value, ...} of the present members (HSCAN:
--                               a member may come twice)
--   R member value ...          removes fill members whose value is still the given one
--   N                           how many members the hash holds (the fan-out's size)
--   S cursor count lifetime_ms  a page of the sweep: removes tombstones and fill members
--                               past their minute, and the version past its horizon (a
--                               version without one gets one lifetime_ms from now);
--                               returns {next cursor, examined, removed}
local MINUTE_DIGITS = 8
local op = ARGV[1]
local tag = KEYS[1]

local function now_minute()
  return math.floor(tonumber(redis.call('TIME')[1]) / 60)
end

local function minute_after(ms)
  return string.format('%0' .. MINUTE_DIGITS .. 'd', now_minute() + 1 + math.ceil(tonumber(ms) / 60000))
end

if op == 'L' then
  local current = redis.call('HGET', tag, ARGV[2])
  local position = ARGV[3]
  if not current or string.sub(current, 2, 1 + #position) < position then
    if ARGV[4] == '1' then
      redis.call('HSET', tag, ARGV[2], '+' .. position)
    else
      redis.call('HSET', tag, ARGV[2], '-' .. position .. minute_after(ARGV[5]))
    end
  end
  return redis.call('HGET', tag, '') or ''
elseif op == 'F' then
  redis.call('HSET', tag, ARGV[2], '*' .. minute_after(ARGV[4]) .. ARGV[3])
  return redis.call('HGET', tag, '') or ''
elseif op == 'I' then
  if ARGV[3] == '0' then
    local version = redis.call('HGET', tag, '')
    if not version or version < ARGV[2] then
      redis.call('HSET', tag, '', ARGV[2], 'h', minute_after(ARGV[5]))
    end
  end
  local page = redis.call('HSCAN', tag, ARGV[3], 'COUNT', ARGV[4])
  local out = {page[1]}
  local fields = page[2]
  for i = 1, #fields, 2 do
    local first = string.sub(fields[i + 1], 1, 1)
    if fields[i] ~= '' and fields[i] ~= 'h' and (first == '+' or first == '*') then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  return out
elseif op == 'R' then
  local removed = 0
  for i = 2, #ARGV, 2 do
    if redis.call('HGET', tag, ARGV[i]) == ARGV[i + 1] then
      removed = removed + redis.call('HDEL', tag, ARGV[i])
    end
  end
  return removed
elseif op == 'N' then
  return redis.call('HLEN', tag) - redis.call('HEXISTS', tag, '') - redis.call('HEXISTS', tag, 'h')
elseif op == 'S' then
  local minute = now_minute()
  local page = redis.call('HSCAN', tag, ARGV[2], 'COUNT', ARGV[3])
  local fields = page[2]
  local removed = 0
  for i = 1, #fields, 2 do
    local value = fields[i + 1]
    local first = string.sub(value, 1, 1)
    local due = nil
    if fields[i] == 'h' then
      if tonumber(value) < minute then
        removed = removed + redis.call('HDEL', tag, '', 'h')
      end
    elseif fields[i] == '' then  -- the previous release kept versions without a horizon
      if redis.call('HEXISTS', tag, '') == 1 then
        redis.call('HSETNX', tag, 'h', minute_after(ARGV[4]))
      end
    elseif first == '-' then
      due = tonumber(string.sub(value, #value - MINUTE_DIGITS + 1))
    elseif first == '*' then
      due = tonumber(string.sub(value, 2, 1 + MINUTE_DIGITS))
    end
    if due ~= nil and due < minute then
      removed = removed + redis.call('HDEL', tag, fields[i])
    end
  end
  return {page[1], #fields / 2, removed}
end
return redis.error_reply('cdc-tags: unknown op ' .. tostring(op))
