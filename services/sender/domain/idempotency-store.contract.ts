import { describe, expect, it } from "vitest";
import type { AcceptedRecord, IdempotencyStore } from "./ports.ts";

const record = (messageId: string, published = false): AcceptedRecord => ({
  messageId,
  contentDigest: `digest-of-${messageId}`,
  acceptedAt: new Date(1_700_000_000_000),
  published,
});

/**
 * What every IdempotencyStore adapter (memory, SQLite, Redis) must do. `make` gets a clock the
 * suite moves, and a TTL.
 */
export function describeIdempotencyStoreContract(
  name: string,
  make: (options: {
    readonly ttlMs: number;
    readonly now: () => number;
  }) => IdempotencyStore & { close(): void },
): void {
  describe(`IdempotencyStore contract: ${name}`, () => {
    const setup = () => {
      let t = 1_000_000;
      const store = make({ ttlMs: 60_000, now: () => t });
      return { store, advance: (ms: number) => (t += ms) };
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

    it("forgets keys after the TTL, and a new reservation then takes the key", async () => {
      const { store, advance } = setup();
      await store.reserve("k", record("m1"));
      advance(60_001);
      expect(await store.get("k")).toBeUndefined();
      expect(await store.reserve("k", record("m2"))).toEqual(record("m2"));
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
