"""The attribution store's Lua scripts (`feature_store.attribution_store` documents what they keep)."""

# ARGV: marker, marker ttl ms, now ms, the outcome's decision marker ('' for none: an impression, or
# a part on a Redis Cluster, where `DECIDE_SCRIPT` ran first), the decision, its ttl ms, then ops of
# 6 slots: op, key, a, b, c, expire-at ms. The decision marker may be the record's own (a miss).
RECORD_SCRIPT = """
local now = tonumber(ARGV[3])
local function expire_at(key, at)
  local ttl = tonumber(at) - now
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local marker, decided = ARGV[1], ARGV[4]
if decided ~= '' and not redis.call('SET', decided, ARGV[5], 'NX', 'PX', ARGV[6]) then
  -- decided before: otherwise (nothing to apply), or so (its own marker says whether it was applied)
  if decided == marker or redis.call('GET', decided) ~= ARGV[5] then return 0 end
end
if decided ~= marker and not redis.call('SET', marker, '1', 'NX', 'PX', ARGV[2]) then return 0 end
for i = 7, #ARGV, 6 do
  local op, key, a, b, c, at = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  if op == 'M' then      -- nothing: the key only placed the marker in its slot
  elseif op == 'H' then  -- bucketed count: field a += 1; a new field trims buckets older than b
    if redis.call('HINCRBY', key, a, 1) == 1 then
      for _, field in ipairs(redis.call('HKEYS', key)) do
        local bucket = tonumber(string.match(field, ':(%d+)$'))
        if bucket and bucket < tonumber(b) then redis.call('HDEL', key, field) end
      end
    end
  elseif op == 'Z' then  -- member a with score b (never lowered); drop members scored below c
    redis.call('ZADD', key, 'GT', b, a)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. c)
  elseif op == 'L' then  -- push a, keep the newest b
    redis.call('LPUSH', key, a)
    redis.call('LTRIM', key, 0, tonumber(b) - 1)
  end
  if op ~= 'M' then expire_at(key, at) end
end
return 1
"""

# On a Redis Cluster, before a record's parts: KEYS[1] the outcome's decision marker, ARGV the
# decision and its ttl ms. 1 when the outcome is decided so (now or before), else 0.
DECIDE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# One round trip for `examined_counts`. ARGV: positions key, since ms, until ms, the impression and
# click measure names, the position count key without its closing '}', the position mark, n, then
# n item count keys (an item's hash holds its per-position counts as `<measure><mark><position>`
# fields). Returns {positions, {impressions, clicks} per position, clicks per item, impressions per
# (item, position) item-major}, each summed over the buckets in [since, until).
EXAMINED_SCRIPT = """
local since, till, shown, clicked, mark = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[7]
local prefix = shown .. mark
local find, sub = string.find, string.sub
local function sums(key)  -- names hold no ':' here, so a plain find splits `<name>:<bucket>`
  local totals, fields = {}, redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local field = fields[i]
    local cut = find(field, ':', 1, true)
    local bucket = tonumber(sub(field, cut + 1))
    if bucket >= since and bucket < till then
      local name = sub(field, 1, cut - 1)
      totals[name] = (totals[name] or 0) + tonumber(fields[i + 1])
    end
  end
  return totals
end
local positions = redis.call('ZRANGE', ARGV[1], 0, -1)
local by_position, clicks, per_item = {}, {}, {}
for _, p in ipairs(positions) do
  local totals = sums(ARGV[6] .. p .. '}')
  by_position[#by_position + 1] = totals[shown] or 0
  by_position[#by_position + 1] = totals[clicked] or 0
end
local n = tonumber(ARGV[8])
for i = 1, n do
  local totals = sums(ARGV[8 + i])
  clicks[i] = totals[clicked] or 0
  for _, p in ipairs(positions) do per_item[#per_item + 1] = totals[prefix .. p] or 0 end
end
return {positions, by_position, clicks, per_item}
"""
