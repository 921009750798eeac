"""The attribution store's Lua scripts (`feature_store.attribution_store` documents what they keep)."""

# ARGV: marker, marker ttl ms, now ms, then ops of 6 slots: op, key, a, b, c, expire-at ms.
RECORD_SCRIPT = """
local now = tonumber(ARGV[3])
local function expire_at(key, at)
  local ttl = tonumber(at) - now
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
if not redis.call('SET', ARGV[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
for i = 4, #ARGV, 6 do
  local op, key, a, b, c, at = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  if op == 'H' then      -- bucketed count: field a += 1; a new field trims buckets older than b
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
  expire_at(key, at)
end
return 1
"""

# One round trip for `examined_counts`. ARGV: positions key, since ms, until ms, the impression and
# click measure names, the position count key without its closing '}', n, then n item count keys
# and n item-position count keys without the position and the closing '}' (positions are digits or
# '-', which need no escaping). Returns {positions, {impressions, clicks} per position, clicks per
# item, impressions per (item, position) item-major}, each summed over the buckets in [since, until).
EXAMINED_SCRIPT = """
local since, till, shown, clicked = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local function sum(key, measure)
  local total, fields = 0, redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local name, bucket = string.match(fields[i], '^(.*):(%d+)$')
    bucket = tonumber(bucket)
    if name == measure and bucket >= since and bucket < till then total = total + tonumber(fields[i + 1]) end
  end
  return total
end
local positions = redis.call('ZRANGE', ARGV[1], 0, -1)
local by_position, clicks, per_item = {}, {}, {}
for _, p in ipairs(positions) do
  local key = ARGV[6] .. p .. '}'
  by_position[#by_position + 1] = sum(key, shown)
  by_position[#by_position + 1] = sum(key, clicked)
end
local n = tonumber(ARGV[7])
for i = 1, n do
  clicks[i] = sum(ARGV[7 + i], clicked)
  for _, p in ipairs(positions) do per_item[#per_item + 1] = sum(ARGV[7 + n + i] .. p .. '}', shown) end
end
return {positions, by_position, clicks, per_item}
"""
