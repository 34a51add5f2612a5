// The Pulsar adapter against the real Pulsar of the cluster profile (PARLEY_ENGINES=1): the broker
// contract, the namespace policies, and faults injected with a TCP relay in front of Pulsar.
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { engineTargets, uniqueTestName } from "../../engines.ts";
import { createLogger } from "../../logging.ts";
import { describeBrokerContract } from "../broker.contract.ts";
import type { Broker, BrokerMessage, Subscription } from "../broker.ts";
import { Topics } from "../broker.ts";
import { createPulsarAdmin } from "./admin.ts";
import { formatMessageId } from "./message-id.ts";
import { DEFAULT_RETENTION, ensurePulsarNamespace, PulsarNamespaceError } from "./namespace.ts";
import { createPulsarBroker } from "./pulsar-broker.ts";
import type { TcpProxy } from "./testdata/tcp-proxy.ts";
import { startTcpProxy } from "./testdata/tcp-proxy.ts";

const targets = engineTargets();
const webUrl = targets?.pulsarWebUrl ?? "";
const logger = createLogger("pulsar-broker-test", (process.env.TEST_LOG_LEVEL ?? "silent") as "silent");
const TENANT = "parley-test";
/** One namespace for this file's run; the fault tests' control run gets its own. */
const NAMESPACE = uniqueTestName("broker");
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const text = (m: BrokerMessage) => decoder.decode(m.payload);
const bytes = (s: string) => encoder.encode(s);

async function waitFor(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe.skipIf(targets === undefined)("Pulsar broker over the WebSocket API", () => {
  const admin = createPulsarAdmin({ webUrl });
  const namespaces = [NAMESPACE];

  beforeAll(async () => {
    await ensurePulsarNamespace({ webUrl, tenant: TENANT, namespace: NAMESPACE });
  });

  afterAll(async () => {
    // Best effort: a namespace only goes once its topics are gone.
    for (const namespace of namespaces) {
      const full = `${TENANT}/${namespace}`;
      const topics = await admin.listTopics(full).catch(() => []);
      await Promise.all(
        topics
          .filter((topic) => topic.startsWith("persistent://"))
          .map((topic) => admin.deleteTopic(topic.slice("persistent://".length)).catch(() => undefined)),
      );
      await admin.deleteNamespace(full).catch(() => undefined);
    }
  });

  describeBrokerContract(
    "pulsar",
    () => createPulsarBroker({ webUrl, tenant: TENANT, namespace: NAMESPACE, logger }),
    { backlog: true },
  );

  describe("namespace policies", () => {
    it("creates the tenant and namespace once and sets retention, deduplication, no TTL and compaction", async () => {
      const tenant = uniqueTestName("parley_tenant");
      const namespace = "policies";
      const full = `${tenant}/${namespace}`;
      const retention = { timeInMinutes: 3 * 24 * 60, sizeInMB: 2_048 };
      try {
        const first = await ensurePulsarNamespace({
          webUrl,
          tenant,
          namespace,
          retention,
          compactionThresholdBytes: 5 * 1024 * 1024,
        });
        expect(first).toEqual({ createdTenant: true, createdNamespace: true });
        const again = await ensurePulsarNamespace({ webUrl, tenant, namespace, retention });
        expect(again).toEqual({ createdTenant: false, createdNamespace: false });

        expect(await admin.getNamespaceRetention(full)).toEqual(retention);
        expect(await admin.getNamespaceDeduplication(full)).toBe(true);
        expect(await admin.getNamespaceMessageTtl(full)).toBe(0);
        // Topic policies travel through a system topic: they show up shortly after being set. The
        // second call set the default threshold over the first one's.
        for (const topic of [Topics.memberships, Topics.blocks]) {
          await waitFor(
            async () => (await admin.getTopicCompactionThreshold(`${full}/${topic}`)) === 1024 * 1024,
            `the compaction threshold of ${topic}`,
          );
          await waitFor(async () => {
            const policy = await admin.getTopicRetention(`${full}/${topic}`);
            return policy?.timeInMinutes === -1 && policy.sizeInMB === -1;
          }, `the retention of ${topic}`);
        }
        expect(DEFAULT_RETENTION).toEqual({ timeInMinutes: 7 * 24 * 60, sizeInMB: -1 });
      } finally {
        for (const topic of [Topics.memberships, Topics.blocks]) {
          await admin.deleteTopic(`${full}/${topic}`).catch(() => undefined);
        }
        await admin.deleteNamespace(full).catch(() => undefined);
        await admin.deleteTenant(tenant).catch(() => undefined);
      }
    });

    it("names the step and Pulsar's reason when a policy cannot be set", async () => {
      const attempt = ensurePulsarNamespace({ webUrl, tenant: TENANT, namespace: "not a valid name" });
      await expect(attempt).rejects.toThrow(PulsarNamespaceError);
      await expect(attempt).rejects.toThrow(
        /could not create the namespace \(namespace parley-test\/not a valid name\)/,
      );
      await expect(
        createPulsarBroker({ webUrl, tenant: TENANT, namespace: uniqueTestName("missing"), logger }),
      ).rejects.toThrow(/does not exist: create it with ensurePulsarNamespace/);
    });
  });

  describe("admin", () => {
    it("finds the last retained message of a topic, also after Pulsar moved it to a new ledger", async () => {
      const topic = `admin.last.${uniqueTestName("t")}`;
      const full = `${TENANT}/${NAMESPACE}/${topic}`;
      expect(await admin.lastMessagePosition(full)).toBeUndefined();
      await admin.createTopic(full);
      expect(await admin.lastMessagePosition(full)).toBeUndefined();
      const broker = await createPulsarBroker({ webUrl, tenant: TENANT, namespace: NAMESPACE, logger });
      try {
        await broker.publish(topic, { key: "k", payload: bytes("one") });
        const { id } = await broker.publish(topic, { key: "k", payload: bytes("two") });
        const formatted = async () => {
          const position = await admin.lastMessagePosition(full);
          return position === undefined ? undefined : formatMessageId(position);
        };
        expect(await formatted()).toBe(id);
        // Unloading reopens the topic on a new, empty ledger.
        const unload = await fetch(`${webUrl}/admin/v2/persistent/${full}/unload`, { method: "PUT" });
        expect(unload.ok).toBe(true);
        expect(await formatted()).toBe(id);
      } finally {
        await broker.close();
      }
    });
  });

  describe("faults", () => {
    let proxy: TcpProxy | undefined;
    let opened: Broker[] = [];

    afterEach(async () => {
      for (const broker of opened) await broker.close().catch(() => undefined);
      opened = [];
      await proxy?.close();
      proxy = undefined;
    });

    async function open(namespace: string, through?: TcpProxy): Promise<Broker> {
      const broker = await createPulsarBroker({
        webUrl: through?.url ?? webUrl,
        tenant: TENANT,
        namespace,
        logger,
        reconnect: { initialDelayMs: 20, maxDelayMs: 300 },
        publishTimeoutMs: 20_000,
      });
      opened.push(broker);
      return broker;
    }

    async function relay(): Promise<TcpProxy> {
      const url = new URL(webUrl);
      proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port) });
      return proxy;
    }

    /** Publishes whose receipts are lost, then resent on a new socket; returns what the topic holds. */
    async function loseReceipts(namespace: string) {
      const through = await relay();
      const broker = await open(namespace, through);
      const direct = await open(namespace);
      const topic = `fault.receipts.${uniqueTestName("t")}`;
      await broker.publish(topic, { key: "k", payload: bytes("warm-up") });
      const stored: BrokerMessage[] = [];
      await direct.follow(topic, {}, (m) => {
        stored.push(m);
      });
      through.holdReplies();
      const publishes = Array.from({ length: 20 }, (_, i) =>
        broker.publish(topic, { key: `k${i % 3}`, payload: bytes(`m${i}`) }),
      );
      // Pulsar has stored all twenty; their receipts are stuck in the relay.
      await waitFor(() => stored.length === 21, "Pulsar to store the twenty messages");
      through.cutAll();
      const results = await Promise.all(publishes);
      const after = await broker.publish(topic, { key: "k", payload: bytes("after") });
      await waitFor(() => stored.some((m) => text(m) === "after"), "the message after the cut");
      await sleep(200);
      return { ids: results.map((r) => r.id), after: after.id, stored: stored.map(text) };
    }

    it("reports Pulsar's refusal instead of retrying for ever", async () => {
      const namespace = uniqueTestName("gone");
      await ensurePulsarNamespace({ webUrl, tenant: TENANT, namespace, compactedTopics: [] });
      const broker = await open(namespace);
      await admin.deleteNamespace(`${TENANT}/${namespace}`);
      await expect(broker.subscribe("t", { subscription: "s" }, async () => {})).rejects.toThrow(
        /HTTP 404: .*Namespace not found/,
      );
      await expect(broker.publish("t", { key: "k", payload: bytes("x") })).rejects.toThrow(
        /Namespace not found/,
      );
      await expect(broker.follow("t", {}, () => {})).rejects.toThrow(/not found/i);
    });

    it("stores a publish resent after a lost receipt once (deduplication) and resolves it", async () => {
      const { ids, after, stored } = await loseReceipts(NAMESPACE);
      // Pulsar answers a duplicate without the first copy's id.
      expect(ids).toEqual(Array.from({ length: 20 }, () => ""));
      expect(after).not.toBe("");
      expect(stored).toEqual(["warm-up", ...Array.from({ length: 20 }, (_, i) => `m${i}`), "after"]);
    });

    it("control: without deduplication the same fault stores the resent messages twice", async () => {
      const namespace = uniqueTestName("nodedup");
      namespaces.push(namespace);
      await ensurePulsarNamespace({ webUrl, tenant: TENANT, namespace });
      await admin.setNamespaceDeduplication(`${TENANT}/${namespace}`, false);
      const { ids, stored } = await loseReceipts(namespace);
      expect(ids.every((id) => id !== "")).toBe(true);
      expect(stored.filter((m) => m === "m0")).toHaveLength(2);
      expect(stored).toHaveLength(1 + 40 + 1);
    });

    it("consumers and followers reconnect after a cut: unacknowledged messages come again, acknowledged ones never", async () => {
      const through = await relay();
      const topic = `fault.cut.${uniqueTestName("t")}`;
      const publisher = await open(NAMESPACE);
      let broker = await open(NAMESPACE, through);
      const handled: BrokerMessage[] = [];
      const active = new Set<string>();
      let overlaps = 0;
      const subscription: Subscription = await broker.subscribe(
        topic,
        { subscription: "s", maxInFlight: 4 },
        async (m) => {
          if (active.has(m.key)) overlaps++;
          active.add(m.key);
          await sleep(Math.random() * 4);
          handled.push(m);
          active.delete(m.key);
        },
      );
      const followed: BrokerMessage[] = [];
      await broker.follow(topic, {}, (m) => {
        followed.push(m);
      });
      const keys = ["a", "b", "c", "d", "e"];
      const published: string[] = [];
      for (let wave = 0; wave < 4; wave++) {
        await Promise.all(
          keys.map((key, i) => {
            const payload = `${key}:${wave}:${i}`;
            published.push(payload);
            return publisher.publish(topic, { key, payload: bytes(payload) });
          }),
        );
        for (let n = 0; n < 5; n++) {
          const payload = `${keys[n]}:${wave}:x${n}`;
          published.push(payload);
          await publisher.publish(topic, { key: keys[n] as string, payload: bytes(payload) });
        }
        if (wave === 1) {
          await waitFor(() => handled.length > 0, "a first handled message");
          through.cutAll();
        }
      }
      const distinct = () => new Set(handled.map(text));
      await waitFor(() => distinct().size === published.length, "every message handled");
      await waitFor(() => followed.length >= published.length, "the follower to read every message");
      await sleep(300);

      expect(overlaps).toBe(0);
      // The follower resumed after the last message it had: each message once, in the topic's order.
      expect(followed.map(text).sort()).toEqual([...published].sort());
      for (const key of keys) {
        const order = published.filter((p) => p.startsWith(`${key}:`));
        expect(followed.filter((m) => m.key === key).map(text)).toEqual(order);
        // The consumer may repeat a message whose acknowledgement the cut lost, but never goes back
        // before a message of its key it had not handled yet.
        const firsts = [...new Set(handled.filter((m) => m.key === key).map(text))];
        expect(firsts).toEqual(order);
      }

      await subscription.close();
      await broker.close();
      broker = await open(NAMESPACE);
      const again: string[] = [];
      await broker.subscribe(topic, { subscription: "s" }, async (m) => {
        again.push(text(m));
      });
      await publisher.publish(topic, { key: "a", payload: bytes("sentinel") });
      await waitFor(() => again.includes("sentinel"), "the sentinel");
      await sleep(200);
      expect(again).toEqual(["sentinel"]);
    });
  });
});
