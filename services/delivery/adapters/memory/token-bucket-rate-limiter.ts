import type { RateLimiter } from "../../domain/ports.ts";

export interface MemoryRateLimiter extends RateLimiter {
  close(): void;
}

/**
 * A token bucket per key in process memory (Redis in the cluster): `burst` updates at once, then
 * `perSecond`. Idle buckets (full again) are swept every minute.
 */
export function createTokenBucketRateLimiter(options: {
  readonly burst: number;
  readonly perSecond: number;
  readonly now?: () => number;
}): MemoryRateLimiter {
  const now = options.now ?? Date.now;
  const buckets = new Map<string, { tokens: number; at: number }>();

  const refill = (bucket: { tokens: number; at: number }, t: number) => {
    bucket.tokens = Math.min(options.burst, bucket.tokens + ((t - bucket.at) / 1000) * options.perSecond);
    bucket.at = t;
  };

  const timer = setInterval(() => {
    const t = now();
    for (const [key, bucket] of buckets) {
      refill(bucket, t);
      if (bucket.tokens >= options.burst) buckets.delete(key);
    }
  }, 60_000);
  timer.unref();

  return {
    take(key) {
      const t = now();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        bucket = { tokens: options.burst, at: t };
        buckets.set(key, bucket);
      }
      refill(bucket, t);
      if (bucket.tokens < 1) return false;
      bucket.tokens -= 1;
      return true;
    },
    close() {
      clearInterval(timer);
    },
  };
}
