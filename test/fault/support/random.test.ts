import { describe, expect, it } from "vitest";
import { createRandom, faultSeeds } from "./random.ts";

describe("fault randomness", () => {
  it("a seed replays the same choices; forks depend on the label only", () => {
    const draw = (seed: number) => {
      const random = createRandom(seed);
      return [random.int(1_000), random.pick(["a", "b", "c"]), random.uuid()];
    };
    expect(draw(7)).toEqual(draw(7));
    expect(draw(7)).not.toEqual(draw(8));
    const a = createRandom(3);
    a();
    expect(a.fork("device").int(1e9)).toBe(createRandom(3).fork("device").int(1e9));
    expect(createRandom(3).uuid()).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
  });

  it("PARLEY_FAULT_SEEDS: a count, a list, or two seeds by default; anything else is refused", () => {
    expect(faultSeeds({})).toEqual([1, 2]);
    expect(faultSeeds({ PARLEY_FAULT_SEEDS: "4" })).toEqual([1, 2, 3, 4]);
    expect(faultSeeds({ PARLEY_FAULT_SEEDS: "17, 42" })).toEqual([17, 42]);
    expect(() => faultSeeds({ PARLEY_FAULT_SEEDS: "0" })).toThrow(/at least 1/);
    expect(() => faultSeeds({ PARLEY_FAULT_SEEDS: "x" })).toThrow(/PARLEY_FAULT_SEEDS/);
  });
});
