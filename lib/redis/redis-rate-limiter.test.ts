import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it, vi } from "vitest";
import { engineTargets } from "../engines.ts";
import { describeRateLimiterContract } from "../rate-limit.contract.ts";
import type { RateLimiter } from "../rate-limit.ts";
import { createRedisRateLimiter } from "./redis-rate-limiter.ts";
import { useRedis } from "./test-support.ts";

const targets = engineTargets();

describe.runIf(targets !== undefined)("Redis rate limiter", () => {
  const ctx = useRedis("rate_limit");

  // The contract moves time itself, so here the script takes the suite's clock instead of TIME.
  describeRateLimiterContract("redis", (rule, now) => ({
    ...createRedisRateLimiter(ctx.redis, rule, { keyPrefix: ctx.prefix(), now }),
    close() {},
  }));

  it("refills on Redis's clock: a client clock an hour ahead gets nothing early", async () => {
    const limiter = createRedisRateLimiter(
      ctx.redis,
      { burst: 2, perSecond: 5 },
      { keyPrefix: ctx.prefix() },
    );
    expect(await limiter.take("a")).toEqual({ allowed: true });
    expect(await limiter.take("a")).toEqual({ allowed: true });
    const refused = await limiter.take("a");
    expect(refused.allowed).toBe(false);
    const wait = refused.allowed ? 0 : refused.retryAfterMs;
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(200);

    const skewed = vi.spyOn(Date, "now").mockReturnValue(Date.now() + 3_600_000);
    try {
      expect((await limiter.take("a")).allowed).toBe(false);
    } finally {
      skewed.mockRestore();
    }
    await sleep(wait + 5);
    expect(await limiter.take("a")).toEqual({ allowed: true });
  });

  it("shares one bucket between limiters (replicas) on the same prefix, and none across prefixes", async () => {
    const rule = { burst: 10, perSecond: 0.001 };
    const shared = ctx.prefix();
    const replicas = [0, 1, 2].map(() => createRedisRateLimiter(ctx.redis, rule, { keyPrefix: shared }));
    const decisions = await Promise.all(
      Array.from({ length: 30 }, (_, i) => (replicas[i % replicas.length] as RateLimiter).take("u")),
    );
    expect(decisions.filter((d) => d.allowed).length).toBe(10);
    const other = createRedisRateLimiter(ctx.redis, rule, { keyPrefix: ctx.prefix() });
    expect(await other.take("u")).toEqual({ allowed: true });
  });

  it("lets a bucket's key expire once it would be full again, plus a minute", async () => {
    const prefix = ctx.prefix();
    const limiter = createRedisRateLimiter(ctx.redis, { burst: 4, perSecond: 2 }, { keyPrefix: prefix });
    await limiter.take("a", 3);
    const ttl = await ctx.redis.pttl(`${prefix}a`);
    // 3 tokens at 2 a second: full again in 1.5 s.
    expect(ttl).toBeGreaterThan(61_000);
    expect(ttl).toBeLessThanOrEqual(61_500);
  });

  it("refuses rules and costs that make no sense, before any call", async () => {
    const redis = ctx.redis;
    expect(() => createRedisRateLimiter(redis, { burst: 0, perSecond: 1 }, { keyPrefix: "x" })).toThrow(
      RangeError,
    );
    expect(() =>
      createRedisRateLimiter(redis, { burst: 1, perSecond: Number.NaN }, { keyPrefix: "x" }),
    ).toThrow(RangeError);
    const limiter = createRedisRateLimiter(redis, { burst: 1, perSecond: 1 }, { keyPrefix: ctx.prefix() });
    await expect(limiter.take("a", -1)).rejects.toThrow(RangeError);
    await expect(limiter.take("a", Number.POSITIVE_INFINITY)).rejects.toThrow(RangeError);
  });
});
