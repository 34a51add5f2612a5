import type { Backoff } from "./backoff.ts";
import type { ParleyClientError } from "./client-error.ts";
import { toClientError } from "./client-error.ts";
import type { Clock } from "./clock.ts";
import { sleep } from "./clock.ts";

export type RetryPolicy = {
  /** Total tries, the first included. */
  readonly attempts: number;
  readonly backoff: Backoff;
  readonly clock: Clock;
  readonly retryable: (error: ParleyClientError) => boolean;
  /** Stops waiting between tries (rejects with the signal's reason). */
  readonly signal?: AbortSignal | undefined;
};

/**
 * Calls `call` until it succeeds, fails with an error `retryable` refuses, or `attempts` are used.
 * Between tries it waits the jittered backoff, or the server's RetryInfo delay when that is longer.
 * Rejects with a ParleyClientError.
 */
export async function withRetries<T>(call: () => Promise<T>, policy: RetryPolicy): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (thrown) {
      if (policy.signal?.aborted) {
        throw policy.signal.reason;
      }
      const error = toClientError(thrown);
      if (attempt + 1 >= policy.attempts || !policy.retryable(error)) {
        throw error;
      }
      await sleep(policy.clock, retryDelay(error, policy.backoff, attempt), policy.signal);
    }
  }
}

/** The jittered backoff for `attempt`, but never less than what the server asked for (RetryInfo). */
export function retryDelay(error: ParleyClientError, backoff: Backoff, attempt: number): number {
  return Math.max(error.retryDelayMs ?? 0, backoff.delay(attempt));
}
