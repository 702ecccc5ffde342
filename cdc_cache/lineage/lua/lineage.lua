#!lua flags=allow-oom
-- The lineage registry of one source: numbers its log lineages, once each, for every
-- worker process (see cdc_cache/lineage/registry.py).
--
-- Flagged allow-oom: a partition first read (or a switch found) while Redis is out of
-- memory must not make its batch, and the invalidations in it, wait. It writes a few
-- fields once per source and two per lineage switch (the switch's description, a few
-- hundred bytes), so the hash stays small.
--
-- KEYS[1]: the source's lineage hash.
-- ARGV[1] = 'ensure': floor. The source's first lineage gets epoch `floor` the first
--   time the source is seen; a floor raised above `latest` (the operator's source_epoch)
--   raises it. Returns {base, latest}.
-- ARGV[1] = 'next': from epoch, floor, largest epoch, switch description (JSON). The
--   lineage after `from`: the one already assigned, or the next free epoch (above every
--   epoch assigned and below none of the floor), set with its description. Returns
--   {epoch, 1 if this call assigned it else 0, latest}.
local key = KEYS[1]
if ARGV[1] == 'ensure' then
  local floor = tonumber(ARGV[2])
  redis.call('HSETNX', key, 'base', floor)
  local latest = tonumber(redis.call('HGET', key, 'latest') or '-1')
  if latest < floor then
    latest = floor
    redis.call('HSET', key, 'latest', latest)
  end
  return {tonumber(redis.call('HGET', key, 'base')), latest}
end
if ARGV[1] == 'next' then
  local from = tonumber(ARGV[2])
  local latest = tonumber(redis.call('HGET', key, 'latest') or ARGV[2])
  local assigned = redis.call('HGET', key, 'next:' .. from)
  if assigned then
    return {tonumber(assigned), 0, latest}
  end
  local epoch = math.max(latest, from, tonumber(ARGV[3]) - 1) + 1
  if epoch > tonumber(ARGV[4]) then
    return redis.error_reply('cdc-lineage: no epoch left after ' .. latest .. ' (largest ' .. ARGV[4] .. ')')
  end
  redis.call('HSET', key, 'next:' .. from, epoch, 'latest', epoch, 'switch:' .. epoch, ARGV[5])
  return {epoch, 1, epoch}
end
return redis.error_reply('cdc-lineage: unknown operation ' .. tostring(ARGV[1]))
