import type { RateLimiter } from "../../domain/ports.ts";

export interface TokenBucketOptions {
  /** Tokens a quiet device has saved up: the burst it may send at once. */
  readonly burst: number;
  /** Tokens added per second: the sustained rate. */
  readonly perSecond: number;
  readonly now?: () => number;
}

/** Per-key token buckets in process memory (the embedded stand-in for the Redis Lua limiter). */
export function createTokenBucketRateLimiter(options: TokenBucketOptions): RateLimiter & { close(): void } {
  const now = options.now ?? Date.now;
  const buckets = new Map<string, { tokens: number; at: number }>();
  // A bucket that has refilled completely is the same as no bucket: drop it to bound memory.
  const fullAfterMs = (options.burst / options.perSecond) * 1000;
  const timer = setInterval(() => {
    const t = now();
    for (const [key, bucket] of buckets) if (t - bucket.at >= fullAfterMs) buckets.delete(key);
  }, 60_000);
  timer.unref();

  return {
    async take(key) {
      const t = now();
      const bucket = buckets.get(key) ?? { tokens: options.burst, at: t };
      bucket.tokens = Math.min(options.burst, bucket.tokens + ((t - bucket.at) / 1000) * options.perSecond);
      bucket.at = t;
      buckets.set(key, bucket);
      if (bucket.tokens >= 1) {
        bucket.tokens -= 1;
        return { allowed: true };
      }
      return { allowed: false, retryAfterMs: Math.ceil(((1 - bucket.tokens) / options.perSecond) * 1000) };
    },
    close() {
      clearInterval(timer);
    },
  };
}
