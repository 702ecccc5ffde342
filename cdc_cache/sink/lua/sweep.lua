#!lua flags=allow-oom
-- Forget the versions of one bucket whose horizon (the Unix minute at the front of each
-- stored version, see cdc_cache/sink/versions.py) has passed. Only deletes, so it may run
-- while Redis is out of memory, which it helps to end.
--
-- A bucket holds versions (8-byte digests, see cdc_cache/core/keys.py) and the records of
-- TRUNCATEs ("truncated:<table>", cdc_cache/sink/lua/truncate.lua), counted apart.
--
-- KEYS[1]: a version bucket. Returns {versions examined, versions removed, truncate
-- records examined, truncate records removed}.

local HORIZON_DIGITS = 8
local CHUNK = 1000  -- HDEL arguments per call (Lua's stack bounds unpack)
local TRUNCATED = 'truncated:'
local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local all = redis.call('HGETALL', KEYS[1])
local expired = {}
local truncates, truncates_expired = 0, 0
for i = 1, #all, 2 do
  local truncate = string.sub(all[i], 1, #TRUNCATED) == TRUNCATED
  if truncate then truncates = truncates + 1 end
  if tonumber(string.sub(all[i + 1], 1, HORIZON_DIGITS)) < minute then
    expired[#expired + 1] = all[i]
    if truncate then truncates_expired = truncates_expired + 1 end
  end
end
for i = 1, #expired, CHUNK do
  redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + CHUNK - 1, #expired)))
end
return {#all / 2 - truncates, #expired - truncates_expired, truncates, truncates_expired}
