import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import type { AcceptedRecord, IdempotencyStore } from "./ports.ts";

const record = (messageId: string, published = false): AcceptedRecord => ({
  messageId,
  contentDigest: `digest-of-${messageId}`,
  acceptedAt: new Date(1_700_000_000_000),
  published,
});

export interface IdempotencyStoreContractOptions {
  /**
   * `virtual` (default): the suite moves the `now` it gives the store. `real`: the store keeps
   * time itself (Redis expires keys on its own clock), so the suite waits for real; the TTL test
   * leaves margins of hundreds of milliseconds, so both clocks get the same test.
   */
  readonly clock?: "virtual" | "real";
}

/**
 * What every IdempotencyStore adapter (memory, SQLite, Redis) must do. `make` gets a TTL and the
 * clock to read (which the suite moves, unless the store keeps real time).
 */
export function describeIdempotencyStoreContract(
  name: string,
  make: (options: {
    readonly ttlMs: number;
    readonly now: () => number;
  }) => IdempotencyStore & { close(): void },
  options: IdempotencyStoreContractOptions = {},
): void {
  describe(`IdempotencyStore contract: ${name}`, () => {
    const setup = (ttlMs = 60_000) => {
      if (options.clock === "real") {
        return { store: make({ ttlMs, now: Date.now }), elapse: (ms: number) => sleep(ms) };
      }
      let t = 1_000_000;
      const store = make({ ttlMs, now: () => t });
      return {
        store,
        elapse: async (ms: number) => {
          t += ms;
        },
      };
    };

    it("the first reservation wins and is what every later one gets back", async () => {
      const { store } = setup();
      expect(await store.get("k")).toBeUndefined();
      expect(await store.reserve("k", record("m1"))).toEqual(record("m1"));
      expect(await store.reserve("k", record("m2"))).toEqual(record("m1"));
      expect(await store.get("k")).toEqual(record("m1"));
      store.close();
    });

    it("remembers that the publish was confirmed", async () => {
      const { store } = setup();
      await store.reserve("k", record("m1"));
      await store.markPublished("k");
      expect(await store.get("k")).toEqual(record("m1", true));
      expect(await store.reserve("k", record("m2"))).toEqual(record("m1", true));
      store.close();
    });

    it("keeps keys for the TTL, then forgets them, and a new reservation then takes the key", async () => {
      const { store, elapse } = setup(1_000);
      await store.reserve("k", record("m1"));
      await store.reserve("published", record("m3"));
      await store.markPublished("published");
      await elapse(600);
      expect(await store.get("k")).toEqual(record("m1"));
      // Confirming the publish does not extend the reservation.
      expect(await store.get("published")).toEqual(record("m3", true));
      await elapse(600);
      expect(await store.get("k")).toBeUndefined();
      expect(await store.get("published")).toBeUndefined();
      // Confirming a forgotten key does not bring it back.
      await store.markPublished("k");
      expect(await store.get("k")).toBeUndefined();
      expect(await store.reserve("k", record("m2"))).toEqual(record("m2"));
      store.close();
    });

    it("gives reservations made at the same moment the first one's record, each", async () => {
      const { store } = setup();
      const answers = await Promise.all([
        store.reserve("k", record("m1")),
        store.reserve("k", record("m2")),
        store.reserve("other", record("m3")),
      ]);
      expect(answers).toEqual([record("m1"), record("m1"), record("m3")]);
      expect(await store.get("k")).toEqual(record("m1"));
      store.close();
    });

    it("keeps keys apart", async () => {
      const { store } = setup();
      await store.reserve("a", record("m1"));
      await store.reserve("b", record("m2"));
      await store.markPublished("a");
      expect((await store.get("a"))?.published).toBe(true);
      expect((await store.get("b"))?.published).toBe(false);
      store.close();
    });
  });
}
