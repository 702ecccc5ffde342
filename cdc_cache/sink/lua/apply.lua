-- Version-gated cache writes: each op applies only if its version is newer than the one
-- stored for its key. Versions are digit strings that sort as the positions they encode
-- (see cdc_cache/sink/versions.py); a missing version reads as "" and is older than every one.
--
-- Versions live in a small hash per slot (the version bucket), under a digest of the cache
-- key, as "<horizon minute, 8 digits><version>". Buckets never get a TTL, so eviction
-- policies that evict only keys with a TTL never take a version or a tombstone; the
-- sweeper removes fields whose horizon has passed.
--
-- A key with no known version but a cached value (filled by an application, or whose
-- version passed its horizon or was lost) cannot tell whether the change is newer than
-- what it holds: a set is then applied as an invalidation (DEL) instead of a write.
--
-- An applied op also deletes the key's lease key, so an application fill that loaded the
-- row before this change cannot land after it (see cdc_cache/aside/cache_aside.py).
--
-- A notification op (N) announces the change of the key op before it (its host): it is
-- appended to the channel's stream only when the host applied, in this same script, so a
-- stale or duplicate change notifies nobody and a write never lands without its notice.
-- On Redis Cluster the channel's stream is in another slot, so an outbox op (O) appends the
-- notification to the outbox of the host's slot instead, on the same condition; the relay
-- (cdc_cache/sink/outbox.py, lua/relay.lua) moves it to the channel's stream.
--
-- The caller puts a shebang line in front: "#!lua" (refused up front while Redis is out of
-- memory) or "#!lua flags=allow-oom" for calls that hold only deletes (D ops), which must
-- land even then.
--
-- KEYS: per key op a (cache key, version bucket, lease key) triple; per N op a
--   (stream key, channel registry set) pair; in op order.
-- ARGV: per key op: kind, version field, version, then
--   J  value                        SET key value PX ttl
--   H  n f1 v1 ... fn vn            DEL key, HSET fields, PEXPIRE ttl
--   D                               DEL key (the version stays as a tombstone)
--   M index_field type present member score flag
--                                   an index key's member (type z: ZADD key score member,
--                                   s: SADD key member; present 0: ZREM/SREM), gated by the
--                                   member's version (the op's field); flag r: may recreate a
--                                   lost index (a snapshot read), x: drop the whole index
-- per N op: N channel maxlen payload  XADD stream MAXLEN ~ maxlen * p payload, SADD channel
-- per O op (one key, the outbox): O channel maxlen payload  XADD outbox * c channel m maxlen p payload
-- A key op's TTLs come from the last "L ttl_ms tombstone_ttl_ms" before it in the call (no
-- keys, no code of its own; a key op with none before it is refused): ttl is the value's
-- (PX, PEXPIRE); its version is kept for max(ttl, tombstone_ttl) after a write (J, H, an
-- M adding a member) and for tombstone_ttl after a removal (D, an M removing one).
-- A key op may be preceded by "T table" (no keys, no code of its own): from there on, key
-- ops are of that table, and one at or below the table's last TRUNCATE (the field
-- "truncated:<table>" of the op's bucket, see cdc_cache/sink/truncate.py) is stale.
-- A J or H op may be preceded by "R" (refresh-only, after any T and L): it writes only over a
-- cached value; on an uncached key it applies as a D (the version is recorded, the lease
-- voided, nothing written) and returns 3, so neither a late older change nor a fill that
-- loaded the row before it can land afterwards.
-- Returns one code per op: 1 applied, 0 stale, 2 duplicate, 3 invalidated (a set that
-- found a value but no version), and for an N op its host's code.
--
-- Every version is read and every op checked before the first write, so a malformed call
-- or a key of the wrong type fails without changing anything.
--
-- An index key (M ops) aggregates many rows, so it is right only if it saw every change of
-- them since it was built. Its record (the field index_field of its bucket: "1" while the
-- worker left members in it, "0" once it emptied it, then the newest member version
-- written) tells an index that vanished (expired, evicted, deleted, dropped) from a new
-- or emptied one. A member added to a vanished index is not written (code 3): the index
-- stays absent, a miss, until a snapshot of its table rebuilds it, instead of coming back
-- with only the members changed since. A TRUNCATE newer than the record empties it for
-- good. A record left "1" never passes its horizon (one field per such index).

local KEYS, ARGV = KEYS, ARGV  -- locals: read several times per op
local HSET_PAIRS = 200
local HORIZON_DIGITS = 8
local NOTIFY_TYPES = {'stream', 'set'}  -- of an N op's keys (an O op has the first only)
local versions = {}  -- by bucket and field: the version as it stands while ops apply
local ids = {}  -- per key op: its bucket and field, the key of versions
local starts = {}
local firsts = {}
local a = 1
local k = 1
local hosted = false
local gate = nil  -- the table of the key ops from here on (a T op), for its TRUNCATE
local floors = {}  -- per key op: its table's truncate position in its bucket, if any
-- From the last L marker: the TTL of the key ops from here on, and how long their versions
-- are kept after a write (max of both TTLs) and after a removal.
local ttl, written_lifetime, tombstone_ttl = nil, nil, nil
local ttls = {}  -- per key op: the TTL of its value (an ARGV string)
local lifetimes = {}  -- per key op: how long its version is kept (ms)
local refreshes = {}  -- per key op: true for a refresh-only write (an R op before it)
local truncates = {}  -- by bucket and table: that position as stored ('' for none)
local records = {}  -- by bucket and index field: {state, newest member version} of an index
local INDEX_TYPES = {z = 'zset', s = 'set'}
local FOREVER = '99999999'  -- the horizon of a record the sweeper must keep
while k <= #KEYS do
  local n = #starts + 1  -- this op's number
  local kind = ARGV[a]
  if kind == 'T' then
    gate = ARGV[a + 1]
    a = a + 2
    kind = ARGV[a]
  end
  if kind == 'L' then
    ttl, tombstone_ttl = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if ttl == nil or tombstone_ttl == nil or ttl <= 0 or tombstone_ttl <= 0 then
      return redis.error_reply('cdc-apply: TTLs must be positive milliseconds, not ' .. tostring(ARGV[a + 1]) .. ' and ' .. tostring(ARGV[a + 2]))
    end
    ttl, written_lifetime = ARGV[a + 1], math.max(ttl, tombstone_ttl)
    a = a + 3
    kind = ARGV[a]
  end
  if kind == 'R' then
    refreshes[n] = true
    a = a + 1
    kind = ARGV[a]
    if kind ~= 'J' and kind ~= 'H' then
      return redis.error_reply('cdc-apply: a refresh-only op must be J or H, not ' .. tostring(kind))
    end
  end
  starts[n] = a
  firsts[n] = k
  if kind == 'N' or kind == 'O' then
    local maxlen = tonumber(ARGV[a + 2])
    if not hosted or maxlen == nil or maxlen < 1 then
      return redis.error_reply('cdc-apply: notification on ' .. KEYS[k] .. ' needs a key op before it and a positive maxlen')
    end
    local width = kind == 'N' and 2 or 1
    for t = 1, width do
      local found = redis.call('TYPE', KEYS[k + t - 1])['ok']
      if found ~= 'none' and found ~= NOTIFY_TYPES[t] then
        return redis.error_reply('WRONGTYPE cdc-apply: ' .. KEYS[k + t - 1] .. ' holds a ' .. found .. ', not a ' .. NOTIFY_TYPES[t])
      end
    end
    a = a + 4
    k = k + width
  else
    local vkey, field = KEYS[k + 1], ARGV[a + 1]
    if ttl == nil then
      return redis.error_reply('cdc-apply: key op on ' .. KEYS[k] .. ' has no L marker before it in its call')
    end
    ttls[n] = ttl
    lifetimes[n] = written_lifetime
    if kind == 'J' then
      a = a + 4
    elseif kind == 'H' then
      a = a + 4 + 2 * tonumber(ARGV[a + 3])
    elseif kind == 'D' then
      lifetimes[n] = tombstone_ttl
      a = a + 3
    elseif kind == 'M' then
      if ARGV[a + 5] ~= '1' then
        lifetimes[n] = tombstone_ttl
      end
      local want = INDEX_TYPES[ARGV[a + 4]]
      local found = redis.call('TYPE', KEYS[k])['ok']
      if want == nil then
        return redis.error_reply('cdc-apply: unknown index type ' .. tostring(ARGV[a + 4]) .. ' for ' .. KEYS[k])
      end
      if found ~= 'none' and found ~= want then
        return redis.error_reply('WRONGTYPE cdc-apply: index ' .. KEYS[k] .. ' holds a ' .. found .. ', not a ' .. want)
      end
      local rid = vkey .. '\0' .. ARGV[a + 3]
      if records[rid] == nil then
        local stored = redis.call('HGET', vkey, ARGV[a + 3])
        records[rid] = stored and {string.sub(stored, HORIZON_DIGITS + 1, HORIZON_DIGITS + 1), string.sub(stored, HORIZON_DIGITS + 2)} or {'', ''}
      end
      a = a + 9
    else
      return redis.error_reply('cdc-apply: unknown op kind ' .. tostring(kind) .. ' for ' .. KEYS[k])
    end
    local id = vkey .. '\0' .. field
    if versions[id] == nil then
      local stored = redis.call('HGET', vkey, field)
      versions[id] = stored and string.sub(stored, HORIZON_DIGITS + 1) or ''
    end
    ids[n] = id
    if gate ~= nil then
      local tid = vkey .. '\0' .. gate
      if truncates[tid] == nil then
        local mark = redis.call('HGET', vkey, 'truncated:' .. gate)
        truncates[tid] = mark and string.sub(mark, HORIZON_DIGITS + 1) or ''
      end
      floors[n] = truncates[tid]
    end
    hosted = true
    k = k + 3
  end
end
if a - 1 ~= #ARGV or k - 1 ~= #KEYS then
  return redis.error_reply('cdc-apply: ' .. #ARGV .. ' arguments and ' .. #KEYS .. ' keys do not match ' .. #starts .. ' ops')
end

local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local horizons = {}  -- by version lifetime (ms): the horizon minute, as stored
local function horizon_of(lifetime)
  local horizon = horizons[lifetime]
  if horizon == nil then
    horizon = string.format('%0' .. HORIZON_DIGITS .. 'd', minute + 1 + math.ceil(tonumber(lifetime) / 60000))
    horizons[lifetime] = horizon
  end
  return horizon
end

-- An M op (the n-th) whose member version is newer: its write to the index; returns its code.
local function index_write(key, vkey, s, n)
  local floor = floors[n]
  local rid = vkey .. '\0' .. ARGV[s + 3]
  local record = records[rid]
  local kind, present, member, flag = ARGV[s + 4], ARGV[s + 5], ARGV[s + 6], ARGV[s + 8]
  local exists = redis.call('EXISTS', key) == 1
  local state = record[1]
  local code = 1
  if flag == 'x' then
    redis.call('DEL', key)
    state, code = '1', 3
  elseif present == '1' then
    local truncated = floor ~= nil and floor ~= '' and record[2] <= floor
    if not exists and state == '1' and flag ~= 'r' and not truncated then
      return 3  -- vanished: it stays absent rather than come back incomplete
    end
    if kind == 'z' then
      redis.call('ZADD', key, ARGV[s + 7], member)
    else
      redis.call('SADD', key, member)
    end
    redis.call('PEXPIRE', key, ttls[n])
    state = '1'
  elseif exists then
    if kind == 'z' then
      redis.call('ZREM', key, member)
    else
      redis.call('SREM', key, member)
    end
    if redis.call('EXISTS', key) == 0 then
      state = '0'
    end
  elseif state == '' then
    return code  -- nothing known of the index: no record to keep
  end
  local newest = record[2] > ARGV[s + 2] and record[2] or ARGV[s + 2]
  local horizon = state == '1' and FOREVER or horizon_of(lifetimes[n])
  redis.call('HSET', vkey, ARGV[s + 3], horizon .. state .. newest)
  records[rid] = {state, newest}
  return code
end
local out = {}
local host = 0
for n, s in ipairs(starts) do
  local key, vkey, lkey = KEYS[firsts[n]], KEYS[firsts[n] + 1], KEYS[firsts[n] + 2]
  local kind, field, version = ARGV[s], ARGV[s + 1], ARGV[s + 2]
  local code = 0
  if kind == 'N' then
    code = host
    if host == 1 or host == 3 then
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[s + 2], '*', 'p', ARGV[s + 3])
      redis.call('SADD', vkey, ARGV[s + 1])
    end
  elseif kind == 'O' then
    code = host
    if host == 1 or host == 3 then
      redis.call('XADD', key, '*', 'c', ARGV[s + 1], 'm', ARGV[s + 2], 'p', ARGV[s + 3])
    end
  else
    local id = ids[n]
    local current = versions[id]
    local floor = floors[n]
    if floor ~= nil and floor ~= '' and version <= floor then
      code = 0
    elseif version == current then
      code = 2
    elseif version > current then
      code = 1
      if kind == 'M' then
        code = index_write(key, vkey, s, n)
      elseif refreshes[n] and redis.call('EXISTS', key) == 0 then
        code = 3
      elseif kind ~= 'D' and current == '' and redis.call('EXISTS', key) == 1 then
        code = 3
        redis.call('DEL', key)
      elseif kind == 'J' then
        redis.call('SET', key, ARGV[s + 3], 'PX', ttls[n])
      else
        redis.call('DEL', key)
        if kind == 'H' then
          local last = s + 3 + 2 * tonumber(ARGV[s + 3])
          for f = s + 4, last, 2 * HSET_PAIRS do
            redis.call('HSET', key, unpack(ARGV, f, math.min(f + 2 * HSET_PAIRS - 1, last)))
          end
          redis.call('PEXPIRE', key, ttls[n])
        end
      end
      redis.call('HSET', vkey, field, horizon_of(lifetimes[n]) .. version)
      redis.call('DEL', lkey)
      versions[id] = version
    end
    host = code
  end
  out[n] = code
end
return out
