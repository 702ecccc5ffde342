-- Version-gated cache writes: each op applies only if its position is newer than the one
-- stored in its version key. Positions are fixed-width strings, so string order is position
-- order; a missing version reads as "" and is older than every position.
--
-- An applied op also deletes the key's lease key, so an application fill that loaded the
-- row before this change cannot land after it (see cdc_cache/client.py).
--
-- KEYS: one (cache key, version key, lease key) triple per op, in op order.
-- ARGV: per op: kind, version (position + rank, see version_of), version ttl ms, then by kind
--   J  value ttl_ms                 SET key value PX ttl
--   H  ttl_ms n f1 v1 ... fn vn     DEL key, HSET fields, PEXPIRE ttl
--   D                               DEL key (the version stays as a tombstone)
-- Returns one code per op: 1 applied, 0 stale, 2 duplicate.
--
-- Every version is read and every op checked before the first write, so a malformed call
-- or a version key of the wrong type fails without changing anything.

local HSET_PAIRS = 200
local versions = {}
local starts = {}
local a = 1
for i = 1, #KEYS, 3 do
  local kind = ARGV[a]
  starts[#starts + 1] = a
  if kind == 'J' then
    a = a + 5
  elseif kind == 'H' then
    a = a + 5 + 2 * tonumber(ARGV[a + 4])
  elseif kind == 'D' then
    a = a + 3
  else
    return redis.error_reply('cdc-apply: unknown op kind ' .. tostring(kind) .. ' for ' .. KEYS[i])
  end
  local vkey = KEYS[i + 1]
  if versions[vkey] == nil then
    versions[vkey] = redis.call('GET', vkey) or ''
  end
end
if a - 1 ~= #ARGV then
  return redis.error_reply('cdc-apply: ' .. #ARGV .. ' arguments do not match ' .. #starts .. ' ops')
end

local out = {}
for n, s in ipairs(starts) do
  local key, vkey, lkey = KEYS[3 * n - 2], KEYS[3 * n - 1], KEYS[3 * n]
  local kind, position, version_ttl = ARGV[s], ARGV[s + 1], ARGV[s + 2]
  local current = versions[vkey]
  local code = 0
  if position == current then
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
  out[n] = code
end
return out
