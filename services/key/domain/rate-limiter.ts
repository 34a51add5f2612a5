/**
 * Rate limiting of prekey claims (stops prekey draining). A port because the cluster profile
 * keeps the budgets in Redis; the embedded one in memory (adapters/memory/token-bucket.ts).
 */
export interface RateLimiter {
  /**
   * Takes `cost` tokens from the bucket `key` (capacity `burst`, refilled completely over
   * `refillMs`). Resolves to 0 when taken, or to how long to wait before asking again (then
   * nothing was taken).
   */
  take(
    key: string,
    cost: number,
    rule: { readonly burst: number; readonly refillMs: number },
    now: Date,
  ): Promise<number>;
}
