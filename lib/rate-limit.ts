/**
 * Rate limits: one port for every service, and its in-memory adapter (the embedded profile). The
 * cluster profile keeps the same buckets in Redis (a Lua script per take), behind the same port;
 * both pass `rate-limit.contract.ts`.
 */

/**
 * A token bucket: it holds at most `burst` tokens and is refilled continuously at `perSecond`
 * tokens per second. A key nobody used for a while has a full bucket, so it may spend `burst` at
 * once; after that it gets `perSecond` on average. "100 per hour" is `{ burst: 100, perSecond:
 * 100 / 3600 }`.
 */
export interface RateRule {
  /** The most tokens a bucket holds: what a quiet key may spend at once. Positive. */
  readonly burst: number;
  /** Tokens added per second: the sustained rate. Positive (fractions for slow rates). */
  readonly perSecond: number;
}

/** The answer to one take: allowed, or refused with how long until the same take would succeed. */
export type RateDecision =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly retryAfterMs: number };

/**
 * Per-key rate limits under one RateRule (chosen when the limiter is made). Async because the
 * cluster's buckets are in Redis.
 */
export interface RateLimiter {
  /**
   * Takes `cost` tokens (default 1) from `key`'s bucket, all or nothing: a refusal takes nothing
   * and says after how many milliseconds (at least 1) the same take would be allowed, if nothing
   * else spends from the bucket meanwhile. A cost above the rule's `burst` is served from a full
   * bucket, which it empties (so it is never refused forever). A cost of 0 is always allowed.
   */
  take(key: string, cost?: number): Promise<RateDecision>;
}

export interface MemoryRateLimiterOptions {
  /** The clock, in milliseconds (tests pass a fake one). Default `Date.now`. */
  readonly now?: () => number;
  /**
   * Buckets kept at most (default 100,000). Full buckets are dropped first; when every bucket is in
   * use, the least recently used ones are forgotten, which gives their keys a full burst back.
   */
  readonly maxBuckets?: number;
}

/** How often full buckets are dropped (they hold nothing a new bucket would not). */
const SWEEP_INTERVAL_MS = 60_000;
/** Token amounts closer than this are equal: float rounding must not refuse an exact retry. */
const EPSILON = 1e-9;

interface Bucket {
  tokens: number;
  /** When `tokens` was computed (ms). */
  at: number;
}

/**
 * The embedded RateLimiter: one token bucket per key in a Map (like Redis without persistence, it
 * forgets on restart, and each process limits on its own). Memory stays bounded: full buckets are
 * dropped by a sweep every minute (its timer never keeps the process alive) and whenever a new
 * key would exceed `maxBuckets`. `close()` stops the sweep.
 */
export function createMemoryRateLimiter(
  rule: RateRule,
  options: MemoryRateLimiterOptions = {},
): RateLimiter & { close(): void } {
  const { burst, perSecond } = rule;
  if (!(burst > 0 && Number.isFinite(burst))) throw new RangeError(`burst must be positive, got ${burst}`);
  if (!(perSecond > 0 && Number.isFinite(perSecond))) {
    throw new RangeError(`perSecond must be positive, got ${perSecond}`);
  }
  const now = options.now ?? Date.now;
  const maxBuckets = options.maxBuckets ?? 100_000;
  if (!(Number.isSafeInteger(maxBuckets) && maxBuckets > 0)) {
    throw new RangeError(`maxBuckets must be a positive integer, got ${maxBuckets}`);
  }
  // Map order is least recently used first: every take moves its bucket to the end.
  const buckets = new Map<string, Bucket>();

  /**
   * Brings `bucket` to time `t`. A clock that went back (a step of the wall clock) refills nothing
   * and takes nothing: the bucket goes on from the new time, so the waits it announced hold.
   */
  const refill = (bucket: Bucket, t: number) => {
    const elapsed = Math.max(0, t - bucket.at);
    bucket.tokens = Math.min(burst, bucket.tokens + (elapsed * perSecond) / 1000);
    bucket.at = t;
  };

  const dropFull = (t: number) => {
    for (const [key, bucket] of buckets) {
      refill(bucket, t);
      if (bucket.tokens >= burst - EPSILON) buckets.delete(key);
    }
  };

  /**
   * Makes room for one more bucket. Each full pass frees at least a tenth of `maxBuckets`
   * (forgetting the least recently used buckets if too few are full), so keys never seen before
   * cost O(1) each on average, even when they arrive faster than buckets fill up.
   */
  const makeRoom = (t: number) => {
    dropFull(t);
    const target = maxBuckets - Math.max(1, Math.floor(maxBuckets / 10));
    for (const key of buckets.keys()) {
      if (buckets.size <= target) break;
      buckets.delete(key);
    }
  };

  const timer = setInterval(() => dropFull(now()), SWEEP_INTERVAL_MS);
  timer.unref();

  return {
    async take(key, cost = 1) {
      if (!(cost >= 0 && Number.isFinite(cost))) throw new RangeError(`cost must be >= 0, got ${cost}`);
      if (cost === 0) return { allowed: true };
      const t = now();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        if (buckets.size >= maxBuckets) makeRoom(t);
        bucket = { tokens: burst, at: t };
      } else {
        buckets.delete(key);
        refill(bucket, t);
      }
      buckets.set(key, bucket);
      const needed = Math.min(cost, burst);
      if (bucket.tokens >= needed - EPSILON) {
        bucket.tokens = Math.max(0, bucket.tokens - needed);
        return { allowed: true };
      }
      // The first whole millisecond at which refill() gives enough, found in refill()'s own
      // arithmetic (the estimate's floor is never past it), so a retry then is never refused.
      const tokens = bucket.tokens;
      const enough = (ms: number) => tokens + (ms * perSecond) / 1000 >= needed - EPSILON;
      let retryAfterMs = Math.max(1, Math.floor(((needed - EPSILON - tokens) * 1000) / perSecond));
      while (!enough(retryAfterMs)) retryAfterMs++;
      return { allowed: false, retryAfterMs };
    },
    close() {
      clearInterval(timer);
    },
  };
}
