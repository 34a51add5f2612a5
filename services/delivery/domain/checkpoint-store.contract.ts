import { describe, expect, it } from "vitest";
import type { CheckpointStore } from "./ports.ts";

/** What every CheckpointStore (memory now, Redis in the cluster) must do; `now` is moved by the suite. */
export function describeCheckpointStoreContract(
  name: string,
  make: (options: {
    readonly ttlMs: number;
    readonly now: () => number;
  }) => CheckpointStore & { close(): void },
): void {
  describe(`CheckpointStore contract: ${name}`, () => {
    it("remembers recorded batches, and only those", async () => {
      let t = 0;
      const store = make({ ttlMs: 10_000, now: () => t });
      expect(await store.has("m:1:0@edge-a#0")).toBe(false);
      await store.record("m:1:0@edge-a#0");
      expect(await store.has("m:1:0@edge-a#0")).toBe(true);
      expect(await store.has("m:1:0@edge-b#0")).toBe(false);
      t += 9_999;
      expect(await store.has("m:1:0@edge-a#0")).toBe(true);
      store.close();
    });

    it("forgets a batch after the TTL, and recording it again renews it", async () => {
      let t = 0;
      const store = make({ ttlMs: 10_000, now: () => t });
      await store.record("a");
      await store.record("b");
      t += 6_000;
      await store.record("a");
      t += 5_000;
      expect(await store.has("a")).toBe(true);
      expect(await store.has("b")).toBe(false);
      store.close();
    });
  });
}
