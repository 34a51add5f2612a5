import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import type { CheckpointStore } from "./ports.ts";

export interface CheckpointStoreContractOptions {
  /**
   * `virtual` (default): the suite moves the `now` it gives the store. `real`: the store keeps
   * time itself (Redis expires keys on its own clock), so the suite waits for real; the TTLs and
   * waits below leave margins of hundreds of milliseconds, so both clocks get the same test.
   */
  readonly clock?: "virtual" | "real";
}

/** What every CheckpointStore (memory, Redis) must do. */
export function describeCheckpointStoreContract(
  name: string,
  make: (options: {
    readonly ttlMs: number;
    readonly now: () => number;
  }) => CheckpointStore & { close(): void },
  options: CheckpointStoreContractOptions = {},
): void {
  describe(`CheckpointStore contract: ${name}`, () => {
    const setup = (ttlMs: number) => {
      if (options.clock === "real") {
        return { store: make({ ttlMs, now: Date.now }), elapse: (ms: number) => sleep(ms) };
      }
      let t = 0;
      const store = make({ ttlMs, now: () => t });
      return {
        store,
        elapse: async (ms: number) => {
          t += ms;
        },
      };
    };

    it("remembers recorded batches, and only those", async () => {
      const { store } = setup(60_000);
      expect(await store.has("m:1:0@edge-a#0")).toBe(false);
      await store.record("m:1:0@edge-a#0");
      expect(await store.has("m:1:0@edge-a#0")).toBe(true);
      expect(await store.has("m:1:0@edge-b#0")).toBe(false);
      store.close();
    });

    it("keeps a batch for the TTL, forgets it after, and recording it again renews it", async () => {
      const { store, elapse } = setup(1_000);
      await store.record("a");
      await store.record("b");
      await elapse(600);
      expect(await store.has("a")).toBe(true);
      expect(await store.has("b")).toBe(true);
      await store.record("a");
      await elapse(600);
      expect(await store.has("a")).toBe(true);
      expect(await store.has("b")).toBe(false);
      store.close();
    });
  });
}
