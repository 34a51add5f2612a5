// The broker port's contract: every Broker adapter (embedded, Pulsar) runs this suite from its own
// test file. Topics are unique per test, so an adapter on a shared server needs no cleanup.
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CLIENT_MESSAGE_MAX_BYTES } from "../message-limits.ts";
import type { Broker, BrokerMessage, Subscription } from "./broker.ts";
import {
  DEAD_LETTER_PROPERTIES,
  deadLetterTopic,
  MAX_PAYLOAD_BYTES,
  PayloadTooLargeError,
} from "./broker.ts";

export interface BrokerContractOptions {
  /** The redelivery delay the nack tests use. Default 50 ms. */
  readonly redeliveryDelayMs?: number;
  /** How long to wait for an expected delivery before failing. Default 10 s. */
  readonly timeoutMs?: number;
  /** The adapter implements the optional `Broker.backlog`: its test joins the suite. */
  readonly backlog?: boolean;
}

const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

function text(message: BrokerMessage): string {
  return decoder.decode(message.payload);
}

function randomDelay(maxMs: number): Promise<void> {
  return sleep(Math.floor(Math.random() * (maxMs + 1)));
}

/** The texts of the messages with `key`, in the order they were handled. */
function ofKey(messages: readonly BrokerMessage[], key: string): string[] {
  return messages.filter((m) => m.key === key).map(text);
}

export function describeBrokerContract(
  name: string,
  makeBroker: (opts: { path: string }) => Promise<Broker>,
  options: BrokerContractOptions = {},
): void {
  const redeliveryDelayMs = options.redeliveryDelayMs ?? 50;
  const timeoutMs = options.timeoutMs ?? 10_000;

  describe(`Broker contract: ${name}`, () => {
    let dir = "";
    let opened: Broker[] = [];

    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), "parley-broker-"));
      opened = [];
    });

    afterEach(async () => {
      for (const broker of opened) await broker.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    });

    /** A broker on this test's file: calling it again after closing the last one is a restart. */
    async function open(): Promise<Broker> {
      const broker = await makeBroker({ path: join(dir, "broker.sqlite") });
      opened.push(broker);
      return broker;
    }

    function topicName(label: string): string {
      return `test.${label}.${randomUUID().slice(0, 8)}`;
    }

    async function waitFor(condition: () => boolean, what: string): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!condition()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await sleep(5);
      }
    }

    /** A subscription that records what it handled (every message acknowledged). */
    async function record(
      broker: Broker,
      topic: string,
      subscription: string,
    ): Promise<{ readonly messages: BrokerMessage[]; readonly subscription: Subscription }> {
      const messages: BrokerMessage[] = [];
      const sub = await broker.subscribe(topic, { subscription }, async (m) => {
        messages.push(m);
      });
      return { messages, subscription: sub };
    }

    it("publishes durably with increasing ids and delivers every message, in order, with key, payload and properties", async () => {
      const broker = await open();
      const topic = topicName("order");
      const before = Date.now();
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) {
        const { id } = await broker.publish(topic, {
          key: "k",
          payload: bytes(`m${i}`),
          properties: { traceparent: TRACEPARENT, n: String(i) },
        });
        ids.push(id);
      }
      // Concurrent publishes get ids in the order publish was called.
      const concurrent = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          broker.publish(topic, { key: `c${i % 3}`, payload: bytes(`c${i}`) }),
        ),
      );
      ids.push(...concurrent.map((r) => r.id));
      expect(new Set(ids).size).toBe(ids.length);
      for (let i = 1; i < ids.length; i++) expect((ids[i - 1] as string) < (ids[i] as string)).toBe(true);

      // Subscribed after publishing: a new subscription starts at the earliest retained message.
      const { messages } = await record(broker, topic, "reader");
      await waitFor(() => messages.length === 50, "50 messages");
      expect(ofKey(messages, "k")).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`));
      for (const key of ["c0", "c1", "c2"]) {
        const expected = Array.from({ length: 30 }, (_, i) => `c${i}`).filter((_, i) => `c${i % 3}` === key);
        expect(ofKey(messages, key)).toEqual(expected);
      }
      const first = messages.find((m) => text(m) === "m7") as BrokerMessage;
      expect(first.topic).toBe(topic);
      expect(first.id).toBe(ids[7]);
      expect(first.key).toBe("k");
      expect(first.properties).toEqual({ traceparent: TRACEPARENT, n: "7" });
      expect(first.redeliveryCount).toBe(0);
      expect(first.publishedAt).toBeInstanceOf(Date);
      expect(first.publishedAt.getTime()).toBeGreaterThanOrEqual(before - 60_000);
      expect(first.publishedAt.getTime()).toBeLessThanOrEqual(Date.now() + 60_000);
      const byId = new Map(messages.map((m) => [m.id, m]));
      expect([...byId.keys()].sort()).toEqual([...ids].sort());

      // Messages published while subscribed arrive too.
      await broker.publish(topic, { key: "k", payload: bytes("live") });
      await waitFor(() => messages.length === 51, "the live message");
      expect(text(messages[50] as BrokerMessage)).toBe("live");
    });

    it("carries a payload as large as a client's largest send makes, byte for byte", async () => {
      // The event of a send (the client's message of up to 4 MiB, its recipient devices and ids)
      // goes through the broker whole: an adapter whose transport is smaller loses accepted sends.
      const broker = await open();
      const topic = topicName("large");
      const payload = new Uint8Array(CLIENT_MESSAGE_MAX_BYTES + 512 * 1024);
      for (let i = 0; i < payload.length; i += 4_096) payload.set(bytes(`chunk ${i}`), i);
      const { messages } = await record(broker, topic, "large");
      await broker.publish(topic, { key: "k", payload, properties: { traceparent: TRACEPARENT } });
      await waitFor(() => messages.length === 1, "the large message");
      const received = messages[0] as BrokerMessage;
      expect(received.payload.length).toBe(payload.length);
      expect(Buffer.from(received.payload).equals(Buffer.from(payload))).toBe(true);
    });

    it("refuses a payload over 5 MiB at once, and goes on publishing", async () => {
      const broker = await open();
      const topic = topicName("too-large");
      // The message is checkOutgoingMessage's: refused before any attempt, not after a publish timeout.
      await expect(
        broker.publish(topic, { key: "k", payload: new Uint8Array(MAX_PAYLOAD_BYTES + 1) }),
      ).rejects.toThrow(PayloadTooLargeError);
      await expect(
        broker.publish(topic, { key: "k", payload: new Uint8Array(MAX_PAYLOAD_BYTES + 1) }),
      ).rejects.toThrow(`payload of ${MAX_PAYLOAD_BYTES + 1} bytes is over the limit`);
      const { messages } = await record(broker, topic, "after");
      await broker.publish(topic, { key: "k", payload: bytes("next") });
      await waitFor(() => messages.length === 1, "the next message");
      expect(text(messages[0] as BrokerMessage)).toBe("next");
    });

    // More keys than handler slots, and more slots than keys (where a free slot must not take a busy key).
    it.each([
      { keyCount: 16, maxInFlight: 4 },
      { keyCount: 4, maxInFlight: 16 },
    ])(
      "handles one key at a time in publish order while different keys run concurrently ($keyCount keys, maxInFlight $maxInFlight)",
      async ({ keyCount, maxInFlight }) => {
        const broker = await open();
        const topic = topicName("keys");
        const keys = Array.from({ length: keyCount }, (_, i) => `key-${i}`);
        const perKey = 320 / keyCount;
        const active = new Set<string>();
        let running = 0;
        let maxRunning = 0;
        let overlaps = 0;
        const handled: BrokerMessage[] = [];
        await broker.subscribe(topic, { subscription: "workers", maxInFlight }, async (m) => {
          if (active.has(m.key)) overlaps++;
          active.add(m.key);
          running++;
          maxRunning = Math.max(maxRunning, running);
          await randomDelay(3);
          handled.push(m);
          running--;
          active.delete(m.key);
        });
        // In waves, so that messages arrive while earlier ones of their key are being handled.
        for (let n = 0; n < perKey; n++) {
          await Promise.all(keys.map((key) => broker.publish(topic, { key, payload: bytes(`${key}:${n}`) })));
          if (n % 4 === 0) await sleep(1);
        }
        await waitFor(() => handled.length === keys.length * perKey, "every message");
        await sleep(redeliveryDelayMs);
        expect(handled).toHaveLength(keys.length * perKey);
        expect(overlaps).toBe(0);
        for (const key of keys) {
          expect(ofKey(handled, key)).toEqual(Array.from({ length: perKey }, (_, n) => `${key}:${n}`));
        }
        expect(maxRunning).toBeGreaterThan(1);
        expect(maxRunning).toBeLessThanOrEqual(Math.min(keyCount, maxInFlight));
      },
    );

    it("never redelivers an acknowledged message: not later, not to a new consumer, not after a restart", async () => {
      let broker = await open();
      const topic = topicName("ack");
      await broker.publish(topic, { key: "k", payload: bytes("a") });
      await broker.publish(topic, { key: "k", payload: bytes("b") });
      const first = await record(broker, topic, "s");
      await waitFor(() => first.messages.length === 2, "a and b");
      // A later message of the same key comes after any redelivery of the earlier ones would.
      await broker.publish(topic, { key: "k", payload: bytes("c") });
      await waitFor(() => first.messages.length === 3, "c");
      expect(first.messages.map(text)).toEqual(["a", "b", "c"]);
      await first.subscription.close();

      const second = await record(broker, topic, "s");
      await broker.publish(topic, { key: "k", payload: bytes("d") });
      await waitFor(() => second.messages.length >= 1, "d");
      await sleep(redeliveryDelayMs);
      expect(second.messages.map(text)).toEqual(["d"]);
      expect(first.messages).toHaveLength(3);

      await broker.close();
      broker = await open();
      const third = await record(broker, topic, "s");
      await broker.publish(topic, { key: "k", payload: bytes("e") });
      await waitFor(() => third.messages.length >= 1, "e");
      await sleep(redeliveryDelayMs);
      expect(third.messages.map(text)).toEqual(["e"]);
    });

    it("redelivers a failed message after the delay with a growing redeliveryCount, holding its key back but not others", async () => {
      const broker = await open();
      const topic = topicName("nack");
      for (const payload of ["s1", "s2", "s3"])
        await broker.publish(topic, { key: "slow", payload: bytes(payload) });
      for (const payload of ["f1", "f2", "f3"])
        await broker.publish(topic, { key: "fast", payload: bytes(payload) });
      const log: BrokerMessage[] = [];
      await broker.subscribe(
        topic,
        { subscription: "s", redeliveryDelayMs: Math.max(redeliveryDelayMs, 100), maxRedeliveries: 5 },
        async (m) => {
          log.push(m);
          if (text(m) === "s2" && m.redeliveryCount < 2) throw new Error("not yet");
        },
      );
      await waitFor(
        () => log.some((m) => text(m) === "s3") && log.some((m) => text(m) === "f3"),
        "s3 and f3",
      );
      const slow = log.filter((m) => m.key === "slow").map((m) => `${text(m)}/${m.redeliveryCount}`);
      expect(slow).toEqual(["s1/0", "s2/0", "s2/1", "s2/2", "s3/0"]);
      const s2 = log.filter((m) => text(m) === "s2");
      expect(new Set(s2.map((m) => m.id)).size).toBe(1);
      expect(s2.every((m) => m.properties !== undefined)).toBe(true);
      expect(log.filter((m) => m.key === "fast").map((m) => `${text(m)}/${m.redeliveryCount}`)).toEqual([
        "f1/0",
        "f2/0",
        "f3/0",
      ]);
      // The other key finished while s2 waited for its first redelivery.
      const firstRedelivery = log.findIndex((m) => text(m) === "s2" && m.redeliveryCount === 1);
      expect(log.findIndex((m) => text(m) === "f3")).toBeLessThan(firstRedelivery);
    });

    it("moves a message to <topic>-<subscription>-DLQ after maxRedeliveries and goes on with its key", async () => {
      let broker = await open();
      const topic = topicName("dlq");
      const dlqTopic = deadLetterTopic(topic, "s");
      expect(dlqTopic).toBe(`${topic}-s-DLQ`);
      const dead = await record(broker, dlqTopic, "dlq-reader");
      await broker.publish(topic, {
        key: "k",
        payload: bytes("poison"),
        properties: { traceparent: TRACEPARENT },
      });
      await broker.publish(topic, { key: "k", payload: bytes("fine") });
      const log: BrokerMessage[] = [];
      await broker.subscribe(
        topic,
        { subscription: "s", redeliveryDelayMs, maxRedeliveries: 2 },
        async (m) => {
          log.push(m);
          if (text(m) === "poison") throw new Error("cannot handle this");
        },
      );
      await waitFor(() => log.some((m) => text(m) === "fine"), "the message after the poison one");
      expect(log.map((m) => `${text(m)}/${m.redeliveryCount}`)).toEqual([
        "poison/0",
        "poison/1",
        "poison/2",
        "fine/0",
      ]);
      await waitFor(() => dead.messages.length === 1, "the dead letter");
      const letter = dead.messages[0] as BrokerMessage;
      expect(letter.topic).toBe(dlqTopic);
      expect(letter.key).toBe("k");
      expect(text(letter)).toBe("poison");
      expect(letter.properties.traceparent).toBe(TRACEPARENT);
      expect(letter.properties[DEAD_LETTER_PROPERTIES.realTopic]?.endsWith(topic)).toBe(true);
      expect(letter.properties[DEAD_LETTER_PROPERTIES.originMessageId]).toBeTruthy();

      // Dead-lettered means acknowledged: it is not delivered again after a restart.
      await broker.close();
      broker = await open();
      const again = await record(broker, topic, "s");
      await broker.publish(topic, { key: "k", payload: bytes("sentinel") });
      await waitFor(() => again.messages.length >= 1, "the sentinel");
      expect(again.messages.map(text)).toEqual(["sentinel"]);
    });

    it("splits keys between consumers of one subscription without handling a key twice at once", async () => {
      const broker = await open();
      const topic = topicName("shared");
      const activeKeys = new Map<string, string>();
      let overlaps = 0;
      const handled: { consumer: string; message: BrokerMessage }[] = [];
      const consumer = (id: string) => async (m: BrokerMessage) => {
        if (activeKeys.has(m.key)) overlaps++;
        activeKeys.set(m.key, id);
        await randomDelay(3);
        handled.push({ consumer: id, message: m });
        activeKeys.delete(m.key);
      };
      await broker.subscribe(topic, { subscription: "group", maxInFlight: 4 }, consumer("a"));
      await broker.subscribe(topic, { subscription: "group", maxInFlight: 4 }, consumer("b"));
      const keys = Array.from({ length: 12 }, (_, i) => `key-${i}`);
      const published: Promise<unknown>[] = [];
      for (let n = 0; n < 10; n++) {
        for (const key of keys) published.push(broker.publish(topic, { key, payload: bytes(`${key}:${n}`) }));
      }
      await Promise.all(published);
      await waitFor(() => handled.length === 120, "every message");
      await sleep(redeliveryDelayMs);
      expect(handled).toHaveLength(120);
      expect(overlaps).toBe(0);
      const messages = handled.map((h) => h.message);
      expect(new Set(messages.map((m) => m.id)).size).toBe(120);
      for (const key of keys) {
        expect(ofKey(messages, key)).toEqual(Array.from({ length: 10 }, (_, n) => `${key}:${n}`));
      }
      expect(handled.filter((h) => h.consumer === "a").length).toBeGreaterThan(0);
      expect(handled.filter((h) => h.consumer === "b").length).toBeGreaterThan(0);
    });

    it("failover: one consumer gets everything; when it closes, the standby takes over", async () => {
      const broker = await open();
      const topic = topicName("failover");
      const handled: { consumer: string; message: BrokerMessage }[] = [];
      const subs = new Map<string, Subscription>();
      for (const id of ["a", "b"]) {
        subs.set(
          id,
          await broker.subscribe(topic, { subscription: "f", mode: "failover" }, async (m) => {
            handled.push({ consumer: id, message: m });
          }),
        );
      }
      for (let i = 0; i < 10; i++)
        await broker.publish(topic, { key: `k${i % 4}`, payload: bytes(`one-${i}`) });
      await waitFor(() => handled.length === 10, "the first ten");
      const active = handled[0]?.consumer as string;
      expect(handled.every((h) => h.consumer === active)).toBe(true);
      await subs.get(active)?.close();
      for (let i = 0; i < 10; i++)
        await broker.publish(topic, { key: `k${i % 4}`, payload: bytes(`two-${i}`) });
      await waitFor(() => handled.length === 20, "the next ten");
      const standby = active === "a" ? "b" : "a";
      expect(handled.slice(10).every((h) => h.consumer === standby)).toBe(true);
      expect(handled.slice(10).map((h) => text(h.message))).toEqual(
        Array.from({ length: 10 }, (_, i) => `two-${i}`),
      );
    });

    it("gives every subscription every message", async () => {
      const broker = await open();
      const topic = topicName("fanout");
      const one = await record(broker, topic, "one");
      const two = await record(broker, topic, "two");
      for (let i = 0; i < 30; i++) await broker.publish(topic, { key: `k${i % 3}`, payload: bytes(`m${i}`) });
      await waitFor(() => one.messages.length === 30 && two.messages.length === 30, "30 messages on each");
      for (const key of ["k0", "k1", "k2"]) {
        const expected = Array.from({ length: 30 }, (_, i) => `m${i}`).filter((_, i) => `k${i % 3}` === key);
        expect(ofKey(one.messages, key)).toEqual(expected);
        expect(ofKey(two.messages, key)).toEqual(expected);
      }
    });

    it("after a restart redelivers the unacknowledged messages, in order, and not the acknowledged ones", async () => {
      let broker = await open();
      const topic = topicName("restart");
      for (let n = 1; n <= 3; n++) {
        await broker.publish(topic, { key: "acked", payload: bytes(`a${n}`) });
        await broker.publish(topic, { key: "failing", payload: bytes(`f${n}`) });
      }
      const session1: BrokerMessage[] = [];
      await broker.subscribe(topic, { subscription: "s", redeliveryDelayMs: 60_000 }, async (m) => {
        session1.push(m);
        if (m.key === "failing") throw new Error("down");
      });
      await waitFor(
        () => ofKey(session1, "acked").length === 3 && ofKey(session1, "failing").length === 1,
        "a1..a3 and f1",
      );
      expect(ofKey(session1, "failing")).toEqual(["f1"]);
      await broker.close();

      broker = await open();
      const session2 = await record(broker, topic, "s");
      await broker.publish(topic, { key: "acked", payload: bytes("a-sentinel") });
      await broker.publish(topic, { key: "failing", payload: bytes("f-sentinel") });
      await waitFor(() => session2.messages.length >= 5, "the redeliveries and the sentinels");
      expect(ofKey(session2.messages, "acked")).toEqual(["a-sentinel"]);
      expect(ofKey(session2.messages, "failing")).toEqual(["f1", "f2", "f3", "f-sentinel"]);
    });

    it("close() waits for running handlers, keeps their acknowledgements and what they publish; publishing after close fails", async () => {
      let broker = await open();
      const topic = topicName("close");
      const downstream = topicName("close-downstream");
      let started = false;
      let finished = false;
      const current = broker;
      await broker.subscribe(topic, { subscription: "s" }, async (m) => {
        started = true;
        await sleep(100);
        // A consumer that publishes onwards (history does) can still publish while the broker drains.
        await current.publish(downstream, { key: m.key, payload: bytes("onwards") });
        finished = true;
      });
      await broker.publish(topic, { key: "k", payload: bytes("slow") });
      await waitFor(() => started, "the handler to start");
      await broker.close();
      expect(finished).toBe(true);
      await expect(broker.publish(topic, { key: "k", payload: bytes("late") })).rejects.toThrow();

      broker = await open();
      const after = await record(broker, topic, "s");
      const onwards = await record(broker, downstream, "next");
      await broker.publish(topic, { key: "k", payload: bytes("sentinel") });
      await waitFor(() => after.messages.length >= 1 && onwards.messages.length >= 1, "the sentinel");
      expect(after.messages.map(text)).toEqual(["sentinel"]);
      expect(onwards.messages.map(text)).toEqual(["onwards"]);
    });

    it("closing a consumer stops its deliveries; the next consumer of the subscription gets the rest once", async () => {
      const broker = await open();
      const topic = topicName("handover");
      for (let i = 0; i < 10; i++) await broker.publish(topic, { key: "k", payload: bytes(`m${i}`) });
      const firstHandled: string[] = [];
      let closing: Promise<void> | undefined;
      const first: Subscription = await broker.subscribe(
        topic,
        { subscription: "s", maxInFlight: 1 },
        async (m) => {
          firstHandled.push(text(m));
          if (firstHandled.length === 3) closing = first.close();
        },
      );
      await waitFor(() => closing !== undefined, "the first consumer to close itself");
      await closing;
      const countAtClose = firstHandled.length;
      await broker.publish(topic, { key: "k", payload: bytes("m10") });
      const second = await record(broker, topic, "s");
      await waitFor(() => second.messages.map(text).includes("m10"), "m10");
      expect(firstHandled).toHaveLength(countAtClose);
      expect([...firstHandled, ...second.messages.map(text)]).toEqual(
        Array.from({ length: 11 }, (_, i) => `m${i}`),
      );
    });

    it("follow: replays the retained topic, then live messages, persistent and ephemeral, one handler call at a time", async () => {
      const broker = await open();
      const topic = topicName("follow");
      for (let i = 0; i < 3; i++) {
        await broker.publish(topic, {
          key: `k${i}`,
          payload: bytes(`old${i}`),
          properties: { traceparent: TRACEPARENT },
        });
      }
      const seen: BrokerMessage[] = [];
      let running = 0;
      let overlaps = 0;
      const follower = await broker.follow(topic, {}, async (m) => {
        if (running > 0) overlaps++;
        running++;
        await randomDelay(2);
        seen.push(m);
        running--;
      });
      await waitFor(() => seen.length === 3, "the retained messages");
      await broker.publish(topic, { key: "k0", payload: bytes("new") });
      await waitFor(() => seen.length === 4, "the live message");
      broker.publishEphemeral(topic, {
        key: "k1",
        payload: bytes("blip"),
        properties: { traceparent: TRACEPARENT },
      });
      await waitFor(() => seen.length === 5, "the ephemeral message");
      expect(seen.map(text)).toEqual(["old0", "old1", "old2", "new", "blip"]);
      expect(seen[0]?.properties.traceparent).toBe(TRACEPARENT);
      expect(seen[4]?.properties.traceparent).toBe(TRACEPARENT);
      expect(seen[4]?.key).toBe("k1");
      expect(seen[4]?.topic).toBe(topic);
      expect(overlaps).toBe(0);
      await follower.close();
      await broker.publish(topic, { key: "k0", payload: bytes("after close") });
      await sleep(redeliveryDelayMs);
      expect(seen).toHaveLength(5);
    });

    it("follow compacted: the latest message per key in id order, without tombstoned keys, then live ones", async () => {
      const broker = await open();
      const topic = topicName("compacted");
      const publish = (key: string, payload: string) =>
        broker.publish(topic, { key, payload: bytes(payload) });
      await publish("x", "x1");
      await publish("y", "y1");
      await publish("x", "x2");
      await publish("z", "z1");
      await publish("w", "w1");
      await publish("w", ""); // a tombstone: w is gone
      const seen: BrokerMessage[] = [];
      await broker.follow(topic, { compacted: true }, (m) => {
        seen.push(m);
      });
      await waitFor(() => seen.length >= 3, "the compacted view");
      await sleep(20);
      expect(seen.map((m) => `${m.key}=${text(m)}`)).toEqual(["y=y1", "x=x2", "z=z1"]);
      await publish("x", "x3");
      await publish("z", "");
      broker.publishEphemeral(topic, { key: "y", payload: bytes("y-live") });
      await waitFor(() => seen.length === 6, "the live messages");
      expect(seen.slice(3).map((m) => `${m.key}=${text(m)}`)).toEqual(["x=x3", "z=", "y=y-live"]);
    });

    it("follow: caughtUp resolves only once every retained message was handled", async () => {
      const broker = await open();
      for (const compacted of [false, true]) {
        const topic = topicName(compacted ? "caught-up-compacted" : "caught-up");
        for (let i = 0; i < 50; i++)
          await broker.publish(topic, { key: `k${i % 20}`, payload: bytes(`m${i}`) });
        const seen: string[] = [];
        const follower = await broker.follow(topic, { compacted }, async (m) => {
          await randomDelay(1);
          seen.push(text(m));
        });
        await follower.caughtUp;
        expect(seen.length).toBe(compacted ? 20 : 50);
        expect(seen.at(-1)).toBe("m49");
        await follower.close();
      }
      const empty = await broker.follow(topicName("caught-up-empty"), {}, () => {});
      await empty.caughtUp;
      await empty.close();
    });

    it("ephemeral messages reach current followers only, never subscriptions or later followers", async () => {
      const broker = await open();
      const topic = topicName("ephemeral");
      const durable = await record(broker, topic, "s");
      const live: BrokerMessage[] = [];
      await broker.follow(topic, {}, (m) => {
        live.push(m);
      });
      broker.publishEphemeral(topic, {
        key: "k",
        payload: bytes("typing"),
        properties: { traceparent: TRACEPARENT },
      });
      await waitFor(() => live.length === 1, "the ephemeral message");
      expect(text(live[0] as BrokerMessage)).toBe("typing");
      expect(live[0]?.properties.traceparent).toBe(TRACEPARENT);

      await broker.publish(topic, { key: "k", payload: bytes("sentinel") });
      await waitFor(() => durable.messages.length >= 1 && live.length === 2, "the sentinel");
      expect(durable.messages.map(text)).toEqual(["sentinel"]);
      const late: BrokerMessage[] = [];
      await broker.follow(topic, {}, (m) => {
        late.push(m);
      });
      await waitFor(() => late.length >= 1, "the late follower's replay");
      await sleep(20);
      expect(late.map(text)).toEqual(["sentinel"]);
    });

    if (options.backlog === true) {
      it("backlog: counts what a subscription has not acknowledged, in flight or without a consumer", async () => {
        const broker = await open();
        const backlog = broker.backlog?.bind(broker);
        if (backlog === undefined) throw new Error("this adapter was said to implement backlog()");
        const topic = topicName("backlog");
        const of = async (subscription: string) =>
          (await backlog()).find((b) => b.topic === topic && b.subscription === subscription)?.messages;
        const until = async (subscription: string, expected: number) => {
          const deadline = Date.now() + timeoutMs;
          let seen = await of(subscription);
          while (seen !== expected) {
            if (Date.now() > deadline)
              throw new Error(`backlog of ${subscription} is ${seen}, not ${expected}`);
            await sleep(20);
            seen = await of(subscription);
          }
        };
        let release: () => void = () => {};
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        const held: BrokerMessage[] = [];
        const holding = await broker.subscribe(topic, { subscription: "held" }, async (m) => {
          held.push(m);
          await gate;
        });
        const done = await record(broker, topic, "done");
        for (let i = 0; i < 5; i++) await broker.publish(topic, { key: `k${i}`, payload: bytes(`m${i}`) });
        await waitFor(() => held.length === 5 && done.messages.length === 5, "5 messages on each");
        await until("held", 5);
        await until("done", 0);
        release();
        await until("held", 0);
        await holding.close();
        // Nobody consumes "held" now: what is published meanwhile is its backlog.
        for (let i = 0; i < 3; i++) await broker.publish(topic, { key: "k", payload: bytes(`late${i}`) });
        await until("held", 3);
      });
    }
  });
}
