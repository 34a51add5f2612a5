import type { Redis } from "../../../../lib/redis/redis-client.ts";
import type { CheckpointStore } from "../../domain/ports.ts";

export interface RedisCheckpointStoreOptions {
  /** Put before every batch id, e.g. `parley:delivery:checkpoint:`. */
  readonly keyPrefix: string;
  /** How long a finished batch is remembered: longer than the broker redelivers. Default 1 h. */
  readonly ttlMs?: number;
}

/**
 * Finished batches in Redis, shared by every delivery worker and outliving their crashes: one key
 * per batch id, expired by Redis after the TTL (no sweep anywhere). `has` is one EXISTS, `record`
 * one SET with PX: a batch recorded again (a redelivery that pushed it anew) is kept a full TTL
 * from then. A lost key (a Redis flush or failover without persistence) only means a batch may be
 * pushed twice, which the edge drops by batch id and clients by message id.
 */
export function createRedisCheckpointStore(
  redis: Redis,
  options: RedisCheckpointStoreOptions,
): CheckpointStore {
  const ttl = String(options.ttlMs ?? 60 * 60 * 1000);
  const { keyPrefix } = options;
  return {
    async has(batchId) {
      return (await redis.exists(keyPrefix + batchId)) === 1;
    },
    async record(batchId) {
      await redis.call("SET", keyPrefix + batchId, "1", "PX", ttl);
    },
  };
}
