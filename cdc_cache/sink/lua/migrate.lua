#!lua flags=allow-oom
-- Move versions the previous release kept in one string key per cache key into their
-- version bucket, keeping whichever version is newer. A legacy key whose value changed
-- since the caller read it is left for the next pass. Frees more than it takes, so it
-- may run while Redis is out of memory.
--
-- KEYS[1]: the version bucket; KEYS[2..]: legacy version keys of that bucket's slot.
-- ARGV: per legacy key: the value read, the bucket field, the version (today's
--   encoding), the horizon (Unix minute, 8 digits).
-- Returns how many legacy keys were moved.

local HORIZON_DIGITS = 8
local moved = 0
for i = 2, #KEYS do
  local j = (i - 2) * 4
  local seen, field, version, horizon = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4]
  if redis.call('GET', KEYS[i]) == seen then
    local stored = redis.call('HGET', KEYS[1], field)
    local current = stored and string.sub(stored, HORIZON_DIGITS + 1) or ''
    if version > current then
      redis.call('HSET', KEYS[1], field, horizon .. version)
    end
    redis.call('DEL', KEYS[i])
    moved = moved + 1
  end
end
return moved
