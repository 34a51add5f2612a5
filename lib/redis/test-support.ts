// Helpers for tests that run against the shared Redis; not exported from lib/index.ts.
import type { Redis } from "ioredis";
import { afterAll, beforeAll } from "vitest";
import { engineTargets, uniqueTestName } from "../engines.ts";
import { createLogger } from "../logging.ts";
import { closeRedisClient, createRedisClient } from "./redis-client.ts";

export interface RedisTestContext {
  /** The suite's client (from `beforeAll` on). */
  readonly redis: Redis;
  /** A key prefix no other test, of this run or of any other, uses. */
  prefix(): string;
}

/**
 * Opens a client to the engines' Redis for the enclosing `describe` (which must only run when
 * `engineTargets()` is set) and deletes every key its tests wrote afterwards. A Redis that cannot
 * be reached fails the suite.
 */
export function useRedis(label: string): RedisTestContext {
  const runPrefix = `${uniqueTestName(`parley_test_${label}`)}:`;
  let client: Redis | undefined;
  let next = 0;

  beforeAll(async () => {
    const targets = engineTargets();
    if (targets === undefined) throw new Error("useRedis() needs the engines switch on");
    client = createRedisClient(targets.redisUrl, createLogger("redis-test", "silent"));
    await client.ping();
  });

  afterAll(async () => {
    if (client === undefined) return;
    await deleteKeysWithPrefix(client, runPrefix);
    await closeRedisClient(client);
  });

  return {
    get redis() {
      if (client === undefined) throw new Error("the Redis client opens in beforeAll");
      return client;
    },
    prefix: () => `${runPrefix}${next++}:`,
  };
}

/** Deletes every key starting with `prefix` (SCAN, so the shared server is never blocked). */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  const pattern = `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`;
  let cursor = "0";
  let deleted = 0;
  do {
    const [nextCursor, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = nextCursor;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== "0");
  return deleted;
}
