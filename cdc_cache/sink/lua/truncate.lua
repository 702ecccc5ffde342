#!lua flags=allow-oom
-- A table's TRUNCATE recorded in version buckets: the field "truncated:<table>" of each
-- bucket holds "<horizon minute, 8 digits><version>" (as a version does, so the sweeper
-- forgets it past its horizon), raised, never lowered. The apply script judges every key
-- op of the table at or below it stale (cdc_cache/sink/lua/apply.lua, the T op).
-- Flagged allow-oom: a TRUNCATE invalidates, like a delete, so Redis refusing writes for
-- memory must not hold it back (its few fields per bucket are what makes the deletes stick).
--
-- KEYS: n version buckets, then per channel its (stream, channel registry set) pair, or
--   (Redis Cluster) one key: the outbox of the first bucket's slot, which gets one entry per
--   channel (relayed like the apply script's, cdc_cache/sink/outbox.py).
-- ARGV: table, version, lifetime ms (the horizon is that far from now), n, maxlen, payload,
-- then the channels.
-- The channels' streams get the payload only when the first bucket's position was raised,
-- so a TRUNCATE replayed after a crash or delivered twice announces nothing again. (Callers
-- give channels only where every bucket is in this one call: one Redis server.)
-- Returns the number of buckets whose position was raised.

local field = 'truncated:' .. ARGV[1]
local HORIZON_DIGITS = 8
local version, n = ARGV[2], tonumber(ARGV[4])
local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local horizon = string.format('%0' .. HORIZON_DIGITS .. 'd', minute + 1 + math.ceil(tonumber(ARGV[3]) / 60000))
local raised = 0
local first = false
for i = 1, n do
  local stored = redis.call('HGET', KEYS[i], field)
  if stored == false or string.sub(stored, HORIZON_DIGITS + 1) < version then
    redis.call('HSET', KEYS[i], field, horizon .. version)
    raised = raised + 1
    if i == 1 then first = true end
  end
end
if first and #KEYS == n + 1 then
  for c = 7, #ARGV do
    redis.call('XADD', KEYS[n + 1], '*', 'c', ARGV[c], 'm', ARGV[5], 'p', ARGV[6])
  end
elseif first then
  for c = 7, #ARGV do
    local k = n + 2 * (c - 7) + 1
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[5], '*', 'p', ARGV[6])
    redis.call('SADD', KEYS[k + 1], ARGV[c])
  end
end
return raised
