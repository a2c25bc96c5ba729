-- One limit decision of mor-gateway, atomic on the Redis server (one round
-- trip). The clock is Redis' own, so every gateway shares it.
--
-- KEYS[1]  failure counter of the (IP, user) pair
-- KEYS[2]  lock of the pair
-- KEYS[3]  sorted set of the locked pairs (score: end of the lock, ms), for
--          the lockouts_active gauge
-- KEYS[4..] one GCRA bucket per step of the core's question (the limit
--          plan, src/core/limits.rs), in its order; the script knows no
--          layer names, its reply names the refusing step by position
-- ARGV[1]  hash: 0 not compared, 1 matched, 2 did not match
-- ARGV[2]  failures that trip the lockout (0: no lockout)
-- ARGV[3]  lockout window, ms
-- ARGV[4]  lockout cool-off, ms
-- ARGV[5]  the pair's name in KEYS[3]
-- ARGV[6]  1: a locked pair is refused; 0: the lockout only reports
-- ARGV[7 + 3i], ARGV[8 + 3i], ARGV[9 + 3i]  layer i's emission interval
--          (µs), burst, and 1 when it refuses (0: it only reports)
--
-- Reply: {0, locked, remaining_1, reset_us_1, ...}  allowed; locked is 1
--                               when the pair is locked and its lockout
--                               only reports; a reporting layer over its
--                               quota has remaining -1 and its retry (µs)
--                               and consumed nothing
--        {1, retry_ms}          the pair is locked out
--        {2, locked}            bad hash, no layer asked (counted; may
--                               have locked the pair)
--        {3, layer, retry_us}   over the quota of layer (1-based); the
--                               layers before it were counted
-- Every key it writes expires by itself: a bucket when it is full again,
-- a counter at the end of its window, a lock at the end of its cool-off,
-- the set of locks a cool-off after the last lock was added.

local hash = tonumber(ARGV[1])
local failures = tonumber(ARGV[2])
local locked = 0
if hash ~= 0 and failures > 0 then
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then
    if ARGV[6] == '1' then
      return {1, ttl}
    end
    locked = 1
  elseif hash == 2 then
    local n = redis.call('INCR', KEYS[1])
    if n == 1 then
      redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
    if n >= failures then
      redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
      redis.call('DEL', KEYS[1])
      local t = redis.call('TIME')
      local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
      redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[4]), ARGV[5])
      redis.call('PEXPIRE', KEYS[3], ARGV[4])
    end
  else
    redis.call('DEL', KEYS[1])
  end
end
if hash == 2 and #KEYS < 4 then
  return {2, locked}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {0, locked}
for i = 4, #KEYS do
  local j = 7 + 3 * (i - 4)
  local interval = tonumber(ARGV[j])
  local burst = tonumber(ARGV[j + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    if ARGV[j + 2] == '1' then
      return {3, i - 3, math.ceil(allow_at - now)}
    end
    out[#out + 1] = -1
    out[#out + 1] = math.ceil(allow_at - now)
  else
    redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX',
      math.max(1, math.ceil((new_tat - now) / 1000)))
    out[#out + 1] = math.floor((now - allow_at) / interval)
    out[#out + 1] = math.ceil(new_tat - now)
  end
end
return out
