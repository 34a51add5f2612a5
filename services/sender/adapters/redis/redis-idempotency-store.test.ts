import { describe, expect, it } from "vitest";
import { engineTargets } from "../../../../lib/engines.ts";
import { createLogger } from "../../../../lib/logging.ts";
import { closeRedisClient, createRedisClient } from "../../../../lib/redis/redis-client.ts";
import { useRedis } from "../../../../lib/redis/test-support.ts";
import { describeIdempotencyStoreContract } from "../../domain/idempotency-store.contract.ts";
import type { AcceptedRecord } from "../../domain/ports.ts";
import { createRedisIdempotencyStore } from "./idempotency-store.ts";

const targets = engineTargets();

const record = (messageId: string): AcceptedRecord => ({
  messageId,
  contentDigest: "d",
  acceptedAt: new Date(1_700_000_000_123),
  published: false,
});

describe.runIf(targets !== undefined)("sender's Redis idempotency store", () => {
  const ctx = useRedis("sender_idem");

  describeIdempotencyStoreContract(
    "redis",
    ({ ttlMs }) => ({
      ...createRedisIdempotencyStore(ctx.redis, { keyPrefix: ctx.prefix(), ttlMs }),
      close() {},
    }),
    { clock: "real" },
  );

  it("lets exactly one of many concurrent reservations from separate connections win", async () => {
    const prefix = ctx.prefix();
    const clients = [0, 1, 2].map(() =>
      createRedisClient(targets?.redisUrl ?? "", createLogger("t", "silent")),
    );
    try {
      const stores = clients.map((c) => createRedisIdempotencyStore(c, { keyPrefix: prefix }));
      const answers = await Promise.all(
        Array.from({ length: 30 }, (_, i) => stores[i % stores.length]?.reserve("k", record(`m${i}`))),
      );
      const winners = new Set(answers.map((a) => a?.messageId));
      expect(winners.size).toBe(1);
      const [winner] = winners;
      expect(answers.filter((a, i) => a?.messageId === `m${i}`)).toHaveLength(1);
      expect(await stores[0]?.get("k")).toEqual(record(winner ?? ""));
    } finally {
      for (const client of clients) await closeRedisClient(client);
    }
  });

  it("keeps the reservation's TTL when the publish is confirmed", async () => {
    const prefix = ctx.prefix();
    const store = createRedisIdempotencyStore(ctx.redis, { keyPrefix: prefix });
    await store.reserve("k", record("m1"));
    const before = await ctx.redis.pttl(`${prefix}k`);
    expect(before).toBeGreaterThan(24 * 3_600_000 - 5_000);
    expect(before).toBeLessThanOrEqual(24 * 3_600_000);
    await store.markPublished("k");
    const after = await ctx.redis.pttl(`${prefix}k`);
    expect(after).toBeGreaterThan(before - 5_000);
    expect(after).toBeLessThanOrEqual(before);
    expect(await store.get("k")).toEqual({ ...record("m1"), published: true });
  });
});
