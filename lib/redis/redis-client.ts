import { Redis } from "ioredis";
import type { Logger } from "../logging.ts";

export type { Redis } from "ioredis";

export interface RedisClientOptions {
  /** Shown by `CLIENT LIST`, so an operator can tell which process holds a connection. */
  readonly connectionName?: string;
  /**
   * A command without a reply after this long fails (it may still have run on the server, so
   * only idempotent or at-least-once operations may retry it). Default 2 s.
   */
  readonly commandTimeoutMs?: number;
  /** How long one connection attempt may take. Default 5 s. */
  readonly connectTimeoutMs?: number;
  /** The longest pause between reconnection attempts. Default 2 s. */
  readonly maxReconnectDelayMs?: number;
}

/**
 * The one way Parley opens Redis (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS).
 *
 * - It never gives up reconnecting (exponential backoff with jitter, capped): Redis restarting or
 *   failing over is an outage of the features it holds, not a reason for the process to die.
 * - Calls never hang: each fails after `commandTimeoutMs`, including calls queued while
 *   disconnected, so a request waiting on Redis fails within its own deadline and is retried by
 *   its client rather than piling up in memory.
 * - A `READONLY` reply (the primary was demoted in a failover) reconnects and resends the command.
 * - Connection trouble is logged once per outage (warn) and its end once (info), not per attempt.
 */
export function createRedisClient(url: string, logger: Logger, options: RedisClientOptions = {}): Redis {
  const maxDelay = options.maxReconnectDelayMs ?? 2_000;
  const log = logger.child({ component: "redis" });
  const redis = new Redis(url, {
    ...(options.connectionName === undefined ? {} : { connectionName: options.connectionName }),
    commandTimeout: options.commandTimeoutMs ?? 2_000,
    connectTimeout: options.connectTimeoutMs ?? 5_000,
    // A command in flight when the connection broke is sent again at most twice: with the
    // command timeout this bounds how long a caller waits whatever Redis does.
    maxRetriesPerRequest: 2,
    retryStrategy: (attempt) => Math.min(50 * 2 ** Math.min(attempt, 16), maxDelay) + Math.random() * 100,
    reconnectOnError: (err) => (err.message.startsWith("READONLY") ? 2 : false),
  });
  let healthy = true;
  const lost = (err?: Error) => {
    if (!healthy) return;
    healthy = false;
    log.warn(err === undefined ? {} : { err }, "Redis connection lost; reconnecting");
  };
  redis.on("error", (err: Error) => lost(err));
  // A connection the server closed cleanly (a restart, CLIENT KILL) reconnects without an error.
  redis.on("reconnecting", () => lost());
  redis.on("ready", () => {
    if (healthy) return;
    healthy = true;
    log.info("Redis connection restored");
  });
  return redis;
}

/** Closes a client after its pending replies; drops the connection if Redis cannot be reached. */
export async function closeRedisClient(redis: Redis): Promise<void> {
  if (redis.status === "end") return;
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
