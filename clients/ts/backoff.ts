/** Exponential backoff with full jitter, in milliseconds. */
export type BackoffOptions = {
  /** The ceiling of the first delay; each later attempt doubles it. Default 500 ms. */
  readonly baseMs?: number;
  /** The ceiling no delay exceeds. Default 30 s. */
  readonly maxMs?: number;
};

export type Backoff = {
  /** The delay before retry number `attempt` (0 for the first retry): uniform in [0, min(max, base * 2^attempt)). */
  delay(attempt: number): number;
};

/**
 * Full jitter ("Exponential Backoff and Jitter", AWS architecture blog): spreading retries over the
 * whole window keeps a fleet of clients that lost the same edge from coming back in lockstep.
 * `random` is injectable so tests can pin the delays.
 */
export function createBackoff(options: BackoffOptions = {}, random: () => number = Math.random): Backoff {
  const baseMs = options.baseMs ?? 500;
  const maxMs = options.maxMs ?? 30_000;
  if (!(baseMs > 0) || !(maxMs >= baseMs)) {
    throw new RangeError(`backoff needs 0 < baseMs <= maxMs, got baseMs=${baseMs} maxMs=${maxMs}`);
  }
  return {
    delay(attempt) {
      const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
      return Math.floor(random() * ceiling);
    },
  };
}
