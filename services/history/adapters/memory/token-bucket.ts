import type { RateLimiter } from "../../domain/ports.ts";

/** Buckets kept at most; full buckets are dropped first (they hold no information). */
const MAX_BUCKETS = 100_000;

/**
 * An in-process token bucket per key (the embedded stand-in for Redis): `burst` tokens, refilled
 * at `perSecond`. Each replica limits on its own, which is enough for a best-effort request.
 */
export function createTokenBucketRateLimiter(options: {
  readonly burst: number;
  readonly perSecond: number;
  readonly now?: () => number;
}): RateLimiter {
  const now = options.now ?? Date.now;
  const buckets = new Map<string, { tokens: number; at: number }>();
  const refill = (bucket: { tokens: number; at: number }, t: number) => {
    bucket.tokens = Math.min(options.burst, bucket.tokens + ((t - bucket.at) / 1000) * options.perSecond);
    bucket.at = t;
  };
  return {
    take(key) {
      const t = now();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        if (buckets.size >= MAX_BUCKETS) {
          for (const [k, b] of buckets) {
            refill(b, t);
            if (b.tokens >= options.burst) buckets.delete(k);
          }
        }
        bucket = { tokens: options.burst, at: t };
        buckets.set(key, bucket);
      }
      refill(bucket, t);
      if (bucket.tokens >= 1) {
        bucket.tokens -= 1;
        return { allowed: true };
      }
      return { allowed: false, retryAfterMs: Math.ceil(((1 - bucket.tokens) / options.perSecond) * 1000) };
    },
  };
}
