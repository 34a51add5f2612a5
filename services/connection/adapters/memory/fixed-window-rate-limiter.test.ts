import { describe, expect, it } from "vitest";
import { createFixedWindowRateLimiter } from "./fixed-window-rate-limiter.ts";

describe("fixed-window rate limiter", () => {
  it("allows `limit` units per key and window, says how long to wait, and starts over next window", async () => {
    const limiter = createFixedWindowRateLimiter({ limit: 2, windowMs: 1000 });
    const at = (ms: number) => new Date(10_000 + ms);
    expect(await limiter.take("a", at(0))).toBeUndefined();
    expect(await limiter.take("a", at(100))).toBeUndefined();
    expect(await limiter.take("a", at(250))).toBe(750);
    expect(await limiter.take("b", at(300))).toBeUndefined();
    expect(await limiter.take("a", at(1000))).toBeUndefined();
  });
});
