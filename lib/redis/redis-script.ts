import { createHash } from "node:crypto";
import type { Redis } from "ioredis";

export interface RedisScript {
  /** Runs the script: one EVALSHA, plus one EVAL the first time a server has not cached it. */
  run(redis: Redis, keys: readonly string[], args: ReadonlyArray<string | number>): Promise<unknown>;
}

/**
 * A Lua script run by its SHA-1 (the script text crosses the network only when a server has not
 * cached it yet: after a restart or a failover). Scripts run atomically: no other command runs
 * between their reads and writes, on any connection.
 */
export function defineRedisScript(lua: string): RedisScript {
  const sha = createHash("sha1").update(lua).digest("hex");
  return {
    async run(redis, keys, args) {
      try {
        return await redis.evalsha(sha, keys.length, ...keys, ...args);
      } catch (err) {
        if (!(err instanceof Error && err.message.startsWith("NOSCRIPT"))) throw err;
        return await redis.eval(lua, keys.length, ...keys, ...args);
      }
    },
  };
}
