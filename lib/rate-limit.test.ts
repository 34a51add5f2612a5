import { afterEach, describe, expect, it, vi } from "vitest";
import { describeRateLimiterContract } from "./rate-limit.contract.ts";
import { createMemoryRateLimiter } from "./rate-limit.ts";

describeRateLimiterContract("memory", (rule, now) => createMemoryRateLimiter(rule, { now }));

describe("memory rate limiter", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("refuses rules, costs and bounds that make no sense", async () => {
    expect(() => createMemoryRateLimiter({ burst: 0, perSecond: 1 })).toThrow(RangeError);
    expect(() => createMemoryRateLimiter({ burst: 1, perSecond: 0 })).toThrow(RangeError);
    expect(() => createMemoryRateLimiter({ burst: Number.NaN, perSecond: 1 })).toThrow(RangeError);
    expect(() => createMemoryRateLimiter({ burst: 1, perSecond: 1 }, { maxBuckets: 0 })).toThrow(RangeError);
    const limiter = createMemoryRateLimiter({ burst: 1, perSecond: 1 });
    await expect(limiter.take("a", -1)).rejects.toThrow(RangeError);
    await expect(limiter.take("a", Number.POSITIVE_INFINITY)).rejects.toThrow(RangeError);
    limiter.close();
  });

  it("neither refills nor penalises when the clock goes back: the bucket goes on from the new time", async () => {
    let t = 10_000;
    const limiter = createMemoryRateLimiter({ burst: 1, perSecond: 1 }, { now: () => t });
    await limiter.take("a");
    t = 5_000;
    expect(await limiter.take("a")).toEqual({ allowed: false, retryAfterMs: 1_000 });
    t = 6_000;
    expect(await limiter.take("a")).toEqual({ allowed: true });
    limiter.close();
  });

  it("drops full buckets first when a new key would exceed maxBuckets", async () => {
    let t = 0;
    const limiter = createMemoryRateLimiter({ burst: 2, perSecond: 1 }, { now: () => t, maxBuckets: 2 });
    await limiter.take("busy", 2);
    await limiter.take("idle", 1);
    t += 1_000; // idle is full again; busy holds 1 of 2
    await limiter.take("new");
    // busy was kept (the least recently used, but not full): it still has exactly one token.
    expect(await limiter.take("busy")).toEqual({ allowed: true });
    expect((await limiter.take("busy")).allowed).toBe(false);
    limiter.close();
  });

  it("forgets the least recently used buckets when every bucket is in use", async () => {
    const limiter = createMemoryRateLimiter({ burst: 1, perSecond: 1 }, { now: () => 0, maxBuckets: 2 });
    await limiter.take("a");
    await limiter.take("b");
    expect((await limiter.take("a")).allowed).toBe(false); // a is now the most recently used
    await limiter.take("c"); // b, the least recently used, is forgotten
    expect((await limiter.take("a")).allowed).toBe(false);
    expect(await limiter.take("b")).toEqual({ allowed: true });
    limiter.close();
  });

  it("sweeps every minute on a timer that does not keep the process alive, until close()", async () => {
    const setSpy = vi.spyOn(globalThis, "setInterval");
    const clearSpy = vi.spyOn(globalThis, "clearInterval");
    const limiter = createMemoryRateLimiter({ burst: 1, perSecond: 1 });
    const timer = setSpy.mock.results.at(-1)?.value as NodeJS.Timeout;
    expect(setSpy.mock.calls.at(-1)?.[1]).toBe(60_000);
    expect(timer.hasRef()).toBe(false);
    limiter.close();
    expect(clearSpy).toHaveBeenCalledWith(timer);
    setSpy.mockRestore();
    clearSpy.mockRestore();
  });

  it("sweeps once a minute (one clock read each), and never after close()", async () => {
    vi.useFakeTimers();
    const now = vi.fn(() => 0);
    const limiter = createMemoryRateLimiter({ burst: 1, perSecond: 1 }, { now });
    await limiter.take("a");
    const reads = now.mock.calls.length;
    vi.advanceTimersByTime(59_999);
    expect(now.mock.calls.length).toBe(reads);
    vi.advanceTimersByTime(1);
    expect(now.mock.calls.length).toBe(reads + 1);
    limiter.close();
    vi.advanceTimersByTime(120_000);
    expect(now.mock.calls.length).toBe(reads + 1);
  });
});
