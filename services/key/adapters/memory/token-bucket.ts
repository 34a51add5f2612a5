import type { RateLimiter } from "../../domain/rate-limiter.ts";

/**
 * The embedded RateLimiter: token buckets in a Map, refilled continuously. Buckets that are full
 * again are dropped on the next sweep, so idle callers cost nothing. Per process: a cluster of
 * several key processes needs the shared (Redis) limiter instead.
 */
export function createMemoryRateLimiter(options: { readonly maxBuckets?: number } = {}): RateLimiter {
  const maxBuckets = options.maxBuckets ?? 100_000;
  const buckets = new Map<string, { tokens: number; at: number; burst: number; refillMs: number }>();

  const level = (b: { tokens: number; at: number; burst: number; refillMs: number }, now: number) =>
    Math.min(b.burst, b.tokens + ((now - b.at) * b.burst) / b.refillMs);

  const sweep = (now: number) => {
    for (const [key, b] of buckets) if (level(b, now) >= b.burst) buckets.delete(key);
  };

  return {
    async take(key, cost, rule, nowDate) {
      const now = nowDate.getTime();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        if (buckets.size >= maxBuckets) sweep(now);
        bucket = { tokens: rule.burst, at: now, burst: rule.burst, refillMs: rule.refillMs };
        buckets.set(key, bucket);
      }
      bucket.burst = rule.burst;
      bucket.refillMs = rule.refillMs;
      const tokens = level(bucket, now);
      // A request larger than the whole bucket is served from a full bucket (it empties it).
      const needed = Math.min(cost, rule.burst);
      if (tokens >= needed) {
        bucket.tokens = tokens - needed;
        bucket.at = now;
        return 0;
      }
      return Math.max(1, Math.ceil(((needed - tokens) * rule.refillMs) / rule.burst));
    },
  };
}
