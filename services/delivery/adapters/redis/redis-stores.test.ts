import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { engineTargets } from "../../../../lib/engines.ts";
import { useRedis } from "../../../../lib/redis/test-support.ts";
import { describeCheckpointStoreContract } from "../../domain/checkpoint-store.contract.ts";
import type { DevicePresence } from "../../domain/ports.ts";
import { describePresenceStoreContract } from "../../domain/presence-store.contract.ts";
import { createRedisCheckpointStore } from "./checkpoint-store.ts";
import { createRedisPresenceStore } from "./presence-store.ts";

const targets = engineTargets();

describe.runIf(targets !== undefined)("delivery's Redis stores", () => {
  const ctx = useRedis("delivery");

  describeCheckpointStoreContract(
    "redis",
    ({ ttlMs }) => ({
      ...createRedisCheckpointStore(ctx.redis, { keyPrefix: ctx.prefix(), ttlMs }),
      close() {},
    }),
    { clock: "real" },
  );
  describePresenceStoreContract("redis", ({ now }) => ({
    ...createRedisPresenceStore(ctx.redis, { keyPrefix: ctx.prefix(), now }),
    close() {},
  }));

  const entry = (deviceId: string, expiresAt: number): DevicePresence => ({
    device: { userId: "alice", deviceId },
    hostId: "edge-a",
    activity: "idle",
    updatedAt: expiresAt - 1_000,
    expiresAt,
  });

  it("hands each expired entry to exactly one of several concurrent sweepers", async () => {
    const prefix = ctx.prefix();
    const replicas = [0, 1, 2, 3].map(() =>
      createRedisPresenceStore(ctx.redis, { keyPrefix: prefix, now: () => 0, sweepBatch: 7 }),
    );
    const [first] = replicas;
    const devices = Array.from({ length: 60 }, (_, i) => `d${i}`);
    await first?.upsert(devices.map((d, i) => entry(d, i < 50 ? 1_000 : 9_000)));
    const taken = (await Promise.all(replicas.map((r) => r.takeExpired(5_000)))).flat();
    expect(taken.map((e) => e.device.deviceId).sort()).toEqual(devices.slice(0, 50).sort());
    expect((await first?.devicesOf("alice", 5_000))?.length).toBe(10);
  });

  it("leaves expiry to Redis: a dead process's entries and records vanish without any sweep", async () => {
    const prefix = ctx.prefix();
    const store = createRedisPresenceStore(ctx.redis, {
      keyPrefix: prefix,
      sweepGraceMs: 100,
      recordRetentionMs: 300,
    });
    const t = Date.now();
    await store.upsert([entry("phone", t + 200), entry("laptop", t + 100)]);
    await store.setUserRecord("alice", { state: "online", lastSeen: t, changedAt: t });
    const ttl = await ctx.redis.pttl(`${prefix}devices:alice`);
    // The hash lives until its latest entry expired, plus the grace.
    expect(ttl).toBeGreaterThan(200);
    expect(ttl).toBeLessThanOrEqual(300);
    await sleep(450);
    expect(await ctx.redis.exists(`${prefix}devices:alice`, `${prefix}user:alice`)).toBe(0);
    expect(await store.devicesOf("alice", t)).toEqual([]);
    expect(await store.userRecord("alice")).toBeUndefined();
  });

  it("keeps a batch for its TTL in Redis itself", async () => {
    const prefix = ctx.prefix();
    const store = createRedisCheckpointStore(ctx.redis, { keyPrefix: prefix, ttlMs: 90_000 });
    await store.record("m:1:0@edge-a#0");
    const ttl = await ctx.redis.pttl(`${prefix}m:1:0@edge-a#0`);
    expect(ttl).toBeGreaterThan(89_000);
    expect(ttl).toBeLessThanOrEqual(90_000);
  });
});
