import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { engineTargets } from "../engines.ts";
import { createLogger } from "../logging.ts";
import { closeRedisClient, createRedisClient } from "./redis-client.ts";

function capturedLogger() {
  const lines: Array<{ level: string; msg: string }> = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n")) if (line !== "") lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger("redis-client-test", "info", destination), lines };
}

describe("createRedisClient", () => {
  it("fails calls after the command timeout while Redis cannot be reached, and logs the outage once", async () => {
    const { logger, lines } = capturedLogger();
    // Port 1 refuses connections at once, so the client keeps reconnecting during the test.
    const redis = createRedisClient("redis://127.0.0.1:1", logger, {
      commandTimeoutMs: 300,
      maxReconnectDelayMs: 50,
    });
    const started = Date.now();
    await expect(redis.ping()).rejects.toThrow();
    expect(Date.now() - started).toBeLessThan(2_000);
    await sleep(300);
    expect(lines.filter((l) => l.level === "warn")).toHaveLength(1);
    await closeRedisClient(redis);
  });
});

const targets = engineTargets();

describe.runIf(targets !== undefined)("createRedisClient against Redis", () => {
  it("reconnects after its connection is killed, runs calls again and logs the recovery", async () => {
    const url = targets?.redisUrl ?? "";
    const { logger, lines } = capturedLogger();
    const redis = createRedisClient(url, logger, { connectionName: "parley-client-test" });
    const killer = createRedisClient(url, createLogger("killer", "silent"));
    try {
      const id = (await redis.call("CLIENT", "ID")) as number;
      expect(await killer.call("CLIENT", "KILL", "ID", String(id))).toBe(1);
      expect(await redis.ping()).toBe("PONG");
      expect(await redis.call("CLIENT", "GETNAME")).toBe("parley-client-test");
      expect(await redis.call("CLIENT", "ID")).not.toBe(id);
      expect(lines.map((l) => l.level)).toEqual(["warn", "info"]);
    } finally {
      await closeRedisClient(redis);
      await closeRedisClient(killer);
    }
  });
});
