import type { Redis } from "../../../../lib/redis/redis-client.ts";
import { defineRedisScript } from "../../../../lib/redis/redis-script.ts";
import type { AcceptedRecord, IdempotencyStore } from "../../domain/ports.ts";

export interface RedisIdempotencyStoreOptions {
  /** Put before every idempotency key, e.g. `parley:sender:idem:`. */
  readonly keyPrefix: string;
  /** How long a reservation is kept (from the reservation). Default 24 h. */
  readonly ttlMs?: number;
}

/**
 * Sets the published flag (the value's first byte) of a record that still exists: SETRANGE alone
 * would create a missing key, without a TTL, and so resurrect an expired reservation for ever.
 */
const MARK_PUBLISHED = defineRedisScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SETRANGE', KEYS[1], 0, '1')
end
return 0
`);

/**
 * Idempotency keys in Redis, shared by every sender replica. The value is the published flag
 * (`0`/`1`) followed by the record as JSON, so confirming a publish rewrites one byte in place and
 * keeps the key's TTL.
 *
 * - `reserve` is one `SET key value NX GET PX ttl` (Redis 7.0+): the first reservation of a key,
 *   from any process, wins atomically, and every later one gets the winner's record in the same
 *   round trip.
 * - `get` is one GET; `markPublished` one script call (EXISTS, SETRANGE).
 *
 * Losing keys (a flush, a failover without persistence) costs at most a new message id for a
 * retried message, which history stores once anyway (see the port).
 */
export function createRedisIdempotencyStore(
  redis: Redis,
  options: RedisIdempotencyStoreOptions,
): IdempotencyStore {
  const { keyPrefix } = options;
  const ttl = String(options.ttlMs ?? 24 * 60 * 60 * 1000);
  return {
    async get(key) {
      const value = await redis.get(keyPrefix + key);
      return value === null ? undefined : decode(value);
    },
    async reserve(key, record) {
      const held = await redis.call("SET", keyPrefix + key, encode(record), "NX", "GET", "PX", ttl);
      return held === null ? record : decode(held as string);
    },
    async markPublished(key) {
      await MARK_PUBLISHED.run(redis, [keyPrefix + key], []);
    },
  };
}

interface StoredRecord {
  readonly messageId: string;
  readonly contentDigest: string;
  readonly acceptedAtMs: number;
}

function encode(record: AcceptedRecord): string {
  const stored: StoredRecord = {
    messageId: record.messageId,
    contentDigest: record.contentDigest,
    acceptedAtMs: record.acceptedAt.getTime(),
  };
  return `${record.published ? "1" : "0"}${JSON.stringify(stored)}`;
}

function decode(value: string): AcceptedRecord {
  const stored = JSON.parse(value.slice(1)) as StoredRecord;
  return {
    messageId: stored.messageId,
    contentDigest: stored.contentDigest,
    acceptedAt: new Date(stored.acceptedAtMs),
    published: value.startsWith("1"),
  };
}
