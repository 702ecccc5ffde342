#!lua flags=allow-oom
-- Forget the versions of one bucket whose horizon (the Unix minute at the front of each
-- stored version, see cdc_cache/sink/versions.py) has passed. Only deletes, so it may run
-- while Redis is out of memory, which it helps to end.
--
-- KEYS[1]: a version bucket. Returns {fields examined, fields removed}.

local HORIZON_DIGITS = 8
local CHUNK = 1000  -- HDEL arguments per call (Lua's stack bounds unpack)
local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local all = redis.call('HGETALL', KEYS[1])
local expired = {}
for i = 1, #all, 2 do
  if tonumber(string.sub(all[i + 1], 1, HORIZON_DIGITS)) < minute then
    expired[#expired + 1] = all[i]
  end
end
for i = 1, #expired, CHUNK do
  redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + CHUNK - 1, #expired)))
end
return {#all / 2, #expired}
