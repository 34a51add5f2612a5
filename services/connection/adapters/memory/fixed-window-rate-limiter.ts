import type { RateLimiter } from "../../domain/rate-limiter.ts";

/**
 * The embedded profile's rate limiter: at most `limit` units per key in each window of
 * `windowMs`, counted in process memory (the cluster's equivalent is a Redis counter with a TTL).
 * Windows are aligned to the epoch, so a key's count resets at the window's end; finished
 * windows are dropped as keys are touched, so memory stays bounded by the active keys.
 */
export function createFixedWindowRateLimiter(options: {
  readonly limit: number;
  readonly windowMs: number;
}): RateLimiter {
  const { limit, windowMs } = options;
  if (!(limit > 0) || !(windowMs > 0)) throw new Error("rate limit and window must be positive");
  const counts = new Map<string, { window: number; used: number }>();
  let lastSweep = -1;
  return {
    async take(key, now) {
      const window = Math.floor(now.getTime() / windowMs);
      if (window !== lastSweep) {
        for (const [k, entry] of counts) if (entry.window < window) counts.delete(k);
        lastSweep = window;
      }
      const entry = counts.get(key);
      if (entry === undefined || entry.window !== window) {
        counts.set(key, { window, used: 1 });
        return undefined;
      }
      if (entry.used >= limit) return (window + 1) * windowMs - now.getTime();
      entry.used++;
      return undefined;
    },
  };
}
