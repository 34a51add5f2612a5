/**
 * Limits how often a user may do something (here: ask new users to connect). In the embedded
 * profile an in-process counter; in the cluster one shared by every replica (Redis).
 */
export interface RateLimiter {
  /**
   * Takes one unit for `key` at `now`. Returns undefined when allowed, or how many milliseconds to
   * wait before the next unit is available.
   */
  take(key: string, now: Date): Promise<number | undefined>;
}

/** A limiter that allows everything. */
export const unlimited: RateLimiter = {
  async take() {
    return undefined;
  },
};
