-- Version-gated cache writes: each op applies only if its position is newer than the one
-- stored in its version key. Positions are fixed-width strings, so string order is position
-- order; a missing version reads as "" and is older than every position.
--
-- An applied op also deletes the key's lease key, so an application fill that loaded the
-- row before this change cannot land after it (see cdc_cache/aside/cache_aside.py).
--
-- A notification op (N) announces the change of the key op before it (its host): it is
-- appended to the channel's stream only when the host applied, in this same script, so a
-- stale or duplicate change notifies nobody and a write never lands without its notice.
--
-- KEYS: per key op a (cache key, version key, lease key) triple; per N op a
--   (stream key, channel registry set) pair; in op order.
-- ARGV: per key op: kind, version (position + rank, see version_of), version ttl ms, then
--   J  value ttl_ms                 SET key value PX ttl
--   H  ttl_ms n f1 v1 ... fn vn     DEL key, HSET fields, PEXPIRE ttl
--   D                               DEL key (the version stays as a tombstone)
-- per N op: N channel maxlen payload  XADD stream MAXLEN ~ maxlen * p payload, SADD channel
-- Returns one code per op: 1 applied, 0 stale, 2 duplicate (an N op: its host's code).
--
-- Every version is read and every op checked before the first write, so a malformed call
-- or a key of the wrong type fails without changing anything.

local HSET_PAIRS = 200
local NOTIFY_TYPES = {'stream', 'set'}  -- of an N op's keys
local versions = {}
local starts = {}
local firsts = {}
local a = 1
local k = 1
local hosted = false
while k <= #KEYS do
  local kind = ARGV[a]
  starts[#starts + 1] = a
  firsts[#firsts + 1] = k
  if kind == 'N' then
    local maxlen = tonumber(ARGV[a + 2])
    if not hosted or maxlen == nil or maxlen < 1 then
      return redis.error_reply('cdc-apply: notification on ' .. KEYS[k] .. ' needs a key op before it and a positive maxlen')
    end
    for t, expected in ipairs(NOTIFY_TYPES) do
      local found = redis.call('TYPE', KEYS[k + t - 1])['ok']
      if found ~= 'none' and found ~= expected then
        return redis.error_reply('WRONGTYPE cdc-apply: ' .. KEYS[k + t - 1] .. ' holds a ' .. found .. ', not a ' .. expected)
      end
    end
    a = a + 4
    k = k + 2
  else
    if kind == 'J' then
      a = a + 5
    elseif kind == 'H' then
      a = a + 5 + 2 * tonumber(ARGV[a + 4])
    elseif kind == 'D' then
      a = a + 3
    else
      return redis.error_reply('cdc-apply: unknown op kind ' .. tostring(kind) .. ' for ' .. KEYS[k])
    end
    local vkey = KEYS[k + 1]
    if versions[vkey] == nil then
      versions[vkey] = redis.call('GET', vkey) or ''
    end
    hosted = true
    k = k + 3
  end
end
if a - 1 ~= #ARGV or k - 1 ~= #KEYS then
  return redis.error_reply('cdc-apply: ' .. #ARGV .. ' arguments and ' .. #KEYS .. ' keys do not match ' .. #starts .. ' ops')
end

local out = {}
local host = 0
for n, s in ipairs(starts) do
  local key, vkey, lkey = KEYS[firsts[n]], KEYS[firsts[n] + 1], KEYS[firsts[n] + 2]
  local kind, position, version_ttl = ARGV[s], ARGV[s + 1], ARGV[s + 2]
  local current = versions[vkey]
  local code = 0
  if kind == 'N' then
    code = host
    if host == 1 then
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[s + 2], '*', 'p', ARGV[s + 3])
      redis.call('SADD', vkey, ARGV[s + 1])
    end
  elseif position == current then
    code = 2
  elseif position > current then
    code = 1
    if kind == 'J' then
      redis.call('SET', key, ARGV[s + 3], 'PX', ARGV[s + 4])
    else
      redis.call('DEL', key)
      if kind == 'H' then
        local last = s + 4 + 2 * tonumber(ARGV[s + 4])
        for f = s + 5, last, 2 * HSET_PAIRS do
          redis.call('HSET', key, unpack(ARGV, f, math.min(f + 2 * HSET_PAIRS - 1, last)))
        end
        redis.call('PEXPIRE', key, ARGV[s + 3])
      end
    end
    redis.call('SET', vkey, position, 'PX', version_ttl)
    redis.call('DEL', lkey)
    versions[vkey] = position
  end
  if kind ~= 'N' then
    host = code
  end
  out[n] = code
end
return out
