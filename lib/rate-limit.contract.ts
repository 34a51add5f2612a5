// The RateLimiter port's contract: every adapter (in memory now, Redis later) runs this suite from
// its own test file, on a clock the suite moves (a Redis adapter passes it to its script).
import { describe, expect, it } from "vitest";
import type { RateLimiter, RateRule } from "./rate-limit.ts";

/** Makes an empty limiter under `rule` that reads the time from `now` (milliseconds). */
export type RateLimiterFactory = (rule: RateRule, now: () => number) => RateLimiter & { close(): void };

export function describeRateLimiterContract(name: string, make: RateLimiterFactory): void {
  describe(`RateLimiter contract: ${name}`, () => {
    const setup = (rule: RateRule) => {
      let t = 1_700_000_000_000;
      const limiter = make(rule, () => t);
      return { limiter, advance: (ms: number) => (t += ms) };
    };
    const takes = async (limiter: RateLimiter, key: string, n: number) => {
      const decisions = [];
      for (let i = 0; i < n; i++) decisions.push((await limiter.take(key)).allowed);
      return decisions;
    };

    it("allows a burst, then refuses with the exact wait until the next token", async () => {
      const { limiter } = setup({ burst: 3, perSecond: 2 });
      expect(await takes(limiter, "a", 3)).toEqual([true, true, true]);
      expect(await limiter.take("a")).toEqual({ allowed: false, retryAfterMs: 500 });
      limiter.close();
    });

    it("allows again exactly after retryAfterMs, not a millisecond before", async () => {
      const { limiter, advance } = setup({ burst: 1, perSecond: 3 });
      expect(await limiter.take("a")).toEqual({ allowed: true });
      const refused = await limiter.take("a");
      expect(refused).toEqual({ allowed: false, retryAfterMs: 334 });
      advance(333);
      expect(await limiter.take("a")).toEqual({ allowed: false, retryAfterMs: 1 });
      advance(1);
      expect(await limiter.take("a")).toEqual({ allowed: true });
      limiter.close();
    });

    it("polled every millisecond, refills on time, each refusal saying exactly what is left", async () => {
      // Many small refills of 1/3 token a second add up to a hair under 1 in floating point.
      const { limiter, advance } = setup({ burst: 1, perSecond: 1 / 3 });
      expect(await limiter.take("a")).toEqual({ allowed: true });
      const hints = [];
      for (let elapsed = 0; elapsed < 3_000; elapsed++) {
        const decision = await limiter.take("a");
        hints.push(decision.allowed ? "allowed" : elapsed + decision.retryAfterMs);
        advance(1);
      }
      expect(new Set(hints)).toEqual(new Set([3_000]));
      expect(await limiter.take("a")).toEqual({ allowed: true });
      limiter.close();
    });

    it("refills continuously at perSecond, never above burst", async () => {
      const { limiter, advance } = setup({ burst: 4, perSecond: 1 });
      expect(await takes(limiter, "a", 4)).toEqual([true, true, true, true]);
      advance(2_000);
      expect(await takes(limiter, "a", 3)).toEqual([true, true, false]);
      advance(3_600_000);
      expect(await takes(limiter, "a", 5)).toEqual([true, true, true, true, false]);
      limiter.close();
    });

    it("keeps one bucket per key", async () => {
      const { limiter } = setup({ burst: 1, perSecond: 1 });
      expect(await limiter.take("a")).toEqual({ allowed: true });
      expect((await limiter.take("a")).allowed).toBe(false);
      expect(await limiter.take("b")).toEqual({ allowed: true });
      limiter.close();
    });

    it("takes a cost all or nothing, and a refusal takes nothing", async () => {
      const { limiter, advance } = setup({ burst: 10, perSecond: 1 });
      expect(await limiter.take("a", 7)).toEqual({ allowed: true });
      expect(await limiter.take("a", 5)).toEqual({ allowed: false, retryAfterMs: 2_000 });
      expect(await limiter.take("a", 3)).toEqual({ allowed: true });
      expect(await limiter.take("a", 1)).toEqual({ allowed: false, retryAfterMs: 1_000 });
      advance(1_000);
      expect(await limiter.take("a", 1)).toEqual({ allowed: true });
      limiter.close();
    });

    it("serves a cost above burst from a full bucket, which it empties", async () => {
      const { limiter, advance } = setup({ burst: 5, perSecond: 1 });
      expect(await limiter.take("a", 50)).toEqual({ allowed: true });
      expect(await limiter.take("a")).toEqual({ allowed: false, retryAfterMs: 1_000 });
      advance(1_000);
      expect(await limiter.take("a", 50)).toEqual({ allowed: false, retryAfterMs: 4_000 });
      advance(4_000);
      expect(await limiter.take("a", 50)).toEqual({ allowed: true });
      limiter.close();
    });

    it("handles slow rates (100 an hour) without losing a token to rounding", async () => {
      const { limiter, advance } = setup({ burst: 100, perSecond: 100 / 3600 });
      for (let i = 0; i < 100; i++) expect(await limiter.take("u")).toEqual({ allowed: true });
      const refused = await limiter.take("u");
      expect(refused).toEqual({ allowed: false, retryAfterMs: 36_000 });
      advance(36_000);
      expect(await limiter.take("u")).toEqual({ allowed: true });
      expect(await limiter.take("u")).toEqual({ allowed: false, retryAfterMs: 36_000 });
      // A fixed window would allow 100 more at the top of the hour; a bucket refills evenly.
      advance(3_600_000);
      expect(await takes(limiter, "u", 101)).toEqual([...Array(100).fill(true), false]);
      limiter.close();
    });

    it("allows a cost of 0 even from an empty bucket", async () => {
      const { limiter } = setup({ burst: 1, perSecond: 1 });
      await limiter.take("a");
      expect(await limiter.take("a", 0)).toEqual({ allowed: true });
      limiter.close();
    });
  });
}
