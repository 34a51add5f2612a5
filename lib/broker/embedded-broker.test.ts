import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../logging.ts";
import { describeBrokerContract } from "./broker.contract.ts";
import type { BrokerMessage } from "./broker.ts";
import type { EmbeddedBroker } from "./embedded-broker.ts";
import { createEmbeddedBroker } from "./embedded-broker.ts";

const logger = createLogger("embedded-broker-test", "silent");

describeBrokerContract("embedded", ({ path }) => createEmbeddedBroker({ path, logger }), { backlog: true });
// A receive window of 8 makes subscriptions page through the file instead of holding everything in memory.
describeBrokerContract("embedded, receive window 8", ({ path }) =>
  createEmbeddedBroker({ path, logger, receiveWindow: 8 }),
);

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const text = (m: BrokerMessage) => decoder.decode(m.payload);

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe("embedded broker", () => {
  let dir = "";
  let opened: EmbeddedBroker[] = [];
  const file = () => join(dir, "broker.sqlite");

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "parley-embedded-broker-"));
    opened = [];
  });

  afterEach(async () => {
    for (const broker of opened) await broker.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function open(options: Partial<Parameters<typeof createEmbeddedBroker>[0]> = {}) {
    const broker = await createEmbeddedBroker({ path: file(), logger, ...options });
    opened.push(broker);
    return broker;
  }

  it("keeps every message whose publish resolved when the process is SIGKILLed", async () => {
    const script = fileURLToPath(new URL("./testdata/publisher.ts", import.meta.url));
    const child = spawn(process.execPath, [script, file(), "1000000"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stderr.on("data", (chunk: Buffer) => {
      err += chunk.toString();
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_code, signal) => resolve(signal)),
    );
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      if (out.split("\n").length > 500 && child.exitCode === null && !child.killed) child.kill("SIGKILL");
    });
    expect(await exited, err).toBe("SIGKILL");
    // Only complete lines count: the last one may have been cut by the kill.
    const acknowledged = out
      .split("\n")
      .slice(0, -1)
      .map((line) => line.split(" "))
      .map(([id, n]) => ({ id: id as string, n: Number(n) }));
    expect(acknowledged.length).toBeGreaterThanOrEqual(500);
    expect(out).not.toContain("done");

    const broker = await open();
    const received = new Map<string, BrokerMessage>();
    await broker.subscribe("durability", { subscription: "check", maxInFlight: 256 }, async (m) => {
      received.set(m.id, m);
    });
    await waitFor(() => acknowledged.every(({ id }) => received.has(id)), "every acknowledged message");
    for (const { id, n } of acknowledged) {
      const message = received.get(id) as BrokerMessage;
      expect(text(message)).toBe(`message ${n}`);
      expect(message.properties.n).toBe(String(n));
    }
  });

  it("works in memory", async () => {
    const broker = await createEmbeddedBroker({ path: ":memory:", logger });
    opened.push(broker);
    const seen: string[] = [];
    await broker.subscribe("t", { subscription: "s" }, async (m) => {
      seen.push(text(m));
    });
    await broker.publish("t", { key: "k", payload: encoder.encode("hello") });
    await waitFor(() => seen.length === 1, "the message");
    expect(seen).toEqual(["hello"]);
  });

  it("retention deletes old messages acknowledged by every subscription, keeps unacknowledged ones and the latest per key of compacted topics", async () => {
    let now = 1_000_000;
    const broker = await open({ now: () => now, retention: { maxAgeMs: 1_000 }, compactedTopics: ["ctl"] });
    const publish = (topic: string, key: string, payload: string) =>
      broker.publish(topic, { key, payload: encoder.encode(payload) });
    await publish("t", "a", "m1");
    await publish("t", "a", "m2");
    await publish("t", "b", "m3");
    await publish("t", "b", "m4");
    await publish("free", "k", "old");
    for (const [key, payload] of [
      ["x", "x1"],
      ["x", "x2"],
      ["y", "y1"],
      ["z", "z1"],
      ["z", ""],
    ] as const) {
      await publish("ctl", key, payload);
    }
    const handled: string[] = [];
    const sub = await broker.subscribe("t", { subscription: "s", redeliveryDelayMs: 60_000 }, async (m) => {
      handled.push(text(m));
      if (m.key === "b") throw new Error("stuck");
    });
    await waitFor(() => handled.length === 3, "m1, m2, m3");
    await sub.close(); // stores the acknowledgements of m1 and m2

    now += 10_000;
    await publish("t", "a", "m5");
    await publish("free", "k", "young");
    expect(broker.sweepRetention()).toBe(2 + 1 + 3);
    expect(broker.sweepRetention()).toBe(0);

    const remaining = async (topic: string, expectedCount: number) => {
      const seen: string[] = [];
      const follower = await broker.follow(topic, {}, (m) => {
        seen.push(`${m.key}=${text(m)}`);
      });
      await waitFor(() => seen.length >= expectedCount, `${topic}'s messages`);
      await sleep(20);
      await follower.close();
      return seen;
    };
    expect(await remaining("t", 3)).toEqual(["b=m3", "b=m4", "a=m5"]);
    expect(await remaining("free", 1)).toEqual(["k=young"]);
    expect(await remaining("ctl", 2)).toEqual(["x=x2", "y=y1"]);

    // The unacknowledged messages are still delivered.
    const again: string[] = [];
    await broker.subscribe("t", { subscription: "s" }, async (m) => {
      again.push(`${m.key}=${text(m)}`);
    });
    await waitFor(() => again.length === 3, "m3, m4, m5");
    expect(again.filter((m) => m.startsWith("b="))).toEqual(["b=m3", "b=m4"]);
    expect(again).toContain("a=m5");
  });

  it("waits for the disk on every commit that publishes, dead-letter moves included, not on one that only acknowledges", async () => {
    const broker = await open();
    // Whether each COMMIT ran with the connection switched to synchronous = NORMAL.
    const commits: boolean[] = [];
    let lazy = false;
    const exec = DatabaseSync.prototype.exec;
    DatabaseSync.prototype.exec = function (this: DatabaseSync, sql: string) {
      if (/^PRAGMA synchronous = NORMAL$/.test(sql)) lazy = true;
      else if (/^PRAGMA synchronous = \d$/.test(sql)) lazy = false;
      else if (sql === "COMMIT") commits.push(lazy);
      return exec.call(this, sql);
    };
    try {
      const seen: string[] = [];
      const dead: BrokerMessage[] = [];
      await broker.subscribe("plain", { subscription: "s" }, async (m) => {
        seen.push(text(m));
      });
      await broker.subscribe("poison", { subscription: "s", maxRedeliveries: 0 }, async () => {
        throw new Error("no");
      });
      await broker.subscribe("poison-s-DLQ", { subscription: "d" }, async (m) => {
        dead.push(m);
      });

      let from = commits.length;
      await broker.publish("plain", { key: "k", payload: encoder.encode("hello") });
      expect(commits.slice(from)).toEqual([false]);
      from = commits.length;
      await waitFor(() => seen.length === 1 && commits.length > from, "the acknowledgement's commit");
      expect(commits.slice(from)).toEqual([true]);

      from = commits.length;
      await broker.publish("poison", { key: "k", payload: encoder.encode("p") });
      await waitFor(() => dead.length === 1, "the dead letter");
      await waitFor(() => commits.length >= from + 3, "the dead letter's acknowledgement");
      // The publish, then the move to the dead-letter topic (with the poison's acknowledgement),
      // both synced; then the dead-letter subscription's acknowledgement alone, not.
      expect(commits.slice(from, from + 3)).toEqual([false, false, true]);
    } finally {
      DatabaseSync.prototype.exec = exec;
    }
  });

  it("keeps redelivery counts across a restart, so a poison message still reaches the dead-letter topic", async () => {
    let broker = await open();
    await broker.publish("poison", { key: "k", payload: encoder.encode("p") });
    const counts: number[] = [];
    await broker.subscribe("poison", { subscription: "s", redeliveryDelayMs: 5 }, async (m) => {
      counts.push(m.redeliveryCount);
      throw new Error("no");
    });
    await waitFor(() => counts.length >= 3, "three deliveries");
    await broker.close();
    const before = counts.length;
    expect(counts).toEqual(Array.from({ length: before }, (_, i) => i));

    broker = await open();
    const after: number[] = [];
    await broker.subscribe(
      "poison",
      { subscription: "s", redeliveryDelayMs: 5, maxRedeliveries: 10 },
      async (m) => {
        after.push(m.redeliveryCount);
        throw new Error("no");
      },
    );
    const dead: BrokerMessage[] = [];
    await broker.subscribe("poison-s-DLQ", { subscription: "d" }, async (m) => {
      dead.push(m);
    });
    await waitFor(() => dead.length === 1, "the dead letter");
    expect(after).toEqual(Array.from({ length: 11 - before }, (_, i) => before + i));
  });

  it("notices a message another process wrote between two of its own, without waiting for the poll", async () => {
    const consumer = await open({ pollIntervalMs: 60_000 });
    const seen: string[] = [];
    await consumer.subscribe("shared", { subscription: "s" }, async (m) => {
      seen.push(text(m));
    });
    const follower: string[] = [];
    await consumer.follow("shared", {}, (m) => {
      follower.push(text(m));
    });
    await consumer.publish("shared", { key: "k", payload: encoder.encode("local-1") });
    await waitFor(() => seen.length === 1 && follower.length === 1, "the local message");
    const other = await open();
    await other.publish("shared", { key: "k", payload: encoder.encode("remote") });
    await consumer.publish("shared", { key: "k", payload: encoder.encode("local-2") });
    await waitFor(() => seen.includes("local-2") && follower.includes("local-2"), "the next local message");
    expect(seen).toEqual(["local-1", "remote", "local-2"]);
    expect(follower).toEqual(["local-1", "remote", "local-2"]);
  });

  it("delivers messages another process wrote into the file (polling fallback)", async () => {
    const consumer = await open({ pollIntervalMs: 20 });
    const seen: string[] = [];
    await consumer.subscribe("shared", { subscription: "s" }, async (m) => {
      seen.push(text(m));
    });
    await consumer.publish("shared", { key: "k", payload: encoder.encode("local-1") });
    await waitFor(() => seen.length === 1, "the local message");
    const other = await open();
    await other.publish("shared", { key: "k", payload: encoder.encode("remote") });
    await waitFor(() => seen.length === 2, "the message from the other writer");
    await consumer.publish("shared", { key: "k", payload: encoder.encode("local-2") });
    await waitFor(() => seen.length === 3, "the next local message");
    expect(seen).toEqual(["local-1", "remote", "local-2"]);
  });
});
