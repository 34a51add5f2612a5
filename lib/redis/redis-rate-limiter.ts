import type { Redis } from "ioredis";
import type { RateDecision, RateLimiter, RateRule } from "../rate-limit.ts";
import { defineRedisScript } from "./redis-script.ts";

export interface RedisRateLimiterOptions {
  /**
   * Put before every key, one per limiter: two limiters (the key service's) may see the same key
   * under different rules, and must not share a bucket.
   */
  readonly keyPrefix: string;
  /**
   * The clock in milliseconds, for tests that move time. Default: Redis's own `TIME`, read inside
   * the script, so every process agrees on the time whatever its own clock says.
   */
  readonly now?: () => number;
}

/**
 * One take, refill included, in one script (atomic: concurrent takes on a key from any number of
 * processes are serialised by Redis). The arithmetic is the in-memory limiter's, step for step, so
 * both give the same answers (Lua numbers are IEEE doubles too). The bucket is a hash {tokens, at}
 * that expires once it would be full again (plus a minute), since a missing bucket is a full one.
 *
 * KEYS[1] bucket; ARGV burst, perSecond, tokens needed, now in ms ("" = Redis TIME).
 * Returns {1, 0} (allowed) or {0, retryAfterMs}.
 */
const TAKE = defineRedisScript(`
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local needed = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
else
  now = tonumber(ARGV[4])
end
local EPSILON = 1e-9

local tokens = burst
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if held[1] then
  -- A clock that went back refills nothing: the bucket goes on from the new time.
  local elapsed = math.max(0, now - tonumber(held[2]))
  tokens = math.min(burst, tonumber(held[1]) + (elapsed * rate) / 1000)
end

local allowed = tokens >= needed - EPSILON
if allowed then tokens = math.max(0, tokens - needed) end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(((burst - tokens) * 1000) / rate) + 60000)
if allowed then return {1, 0} end

-- The first whole millisecond at which the refill above gives enough, found in its own arithmetic.
local retry = math.max(1, math.floor(((needed - EPSILON - tokens) * 1000) / rate))
while tokens + (retry * rate) / 1000 < needed - EPSILON do retry = retry + 1 end
return {0, retry}
`);

/**
 * The cluster's RateLimiter: token buckets in Redis, shared by every replica of a service, with
 * the port's semantics exactly (same burst, refill, all-or-nothing costs and retry hints as
 * `createMemoryRateLimiter`). One script call (one round trip) per take; a cost of 0 costs none.
 */
export function createRedisRateLimiter(
  redis: Redis,
  rule: RateRule,
  options: RedisRateLimiterOptions,
): RateLimiter {
  const { burst, perSecond } = rule;
  if (!(burst > 0 && Number.isFinite(burst))) throw new RangeError(`burst must be positive, got ${burst}`);
  if (!(perSecond > 0 && Number.isFinite(perSecond))) {
    throw new RangeError(`perSecond must be positive, got ${perSecond}`);
  }
  const { keyPrefix, now } = options;
  // Numbers cross to Lua as text: the shortest round-trip form loses no bit of a double.
  const burstArg = String(burst);
  const rateArg = String(perSecond);

  return {
    async take(key, cost = 1): Promise<RateDecision> {
      if (!(cost >= 0 && Number.isFinite(cost))) throw new RangeError(`cost must be >= 0, got ${cost}`);
      if (cost === 0) return { allowed: true };
      const needed = String(Math.min(cost, burst));
      const clock = now === undefined ? "" : String(now());
      const reply = await TAKE.run(redis, [keyPrefix + key], [burstArg, rateArg, needed, clock]);
      const [allowed, retryAfterMs] = reply as [number, number];
      return allowed === 1 ? { allowed: true } : { allowed: false, retryAfterMs };
    },
  };
}
