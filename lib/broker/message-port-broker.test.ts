import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MessageChannel } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../logging.ts";
import { describeBrokerContract } from "./broker.contract.ts";
import type { Broker, BrokerMessage } from "./broker.ts";
import { createEmbeddedBroker } from "./embedded-broker.ts";
import { createMessagePortBroker, serveBrokerOverPort } from "./message-port-broker.ts";

const logger = createLogger("message-port-broker-test", "silent");

/** An embedded broker served over a MessageChannel; closing the bridged one closes all three. */
async function bridged(path: string): Promise<{ bridged: Broker; served: Broker; cut(): void }> {
  const served = await createEmbeddedBroker({ path, logger });
  const channel = new MessageChannel();
  const server = serveBrokerOverPort(served, channel.port1);
  const client = createMessagePortBroker(channel.port2);
  return {
    served,
    cut: () => channel.port2.close(),
    bridged: {
      ...client,
      publish: client.publish,
      async close() {
        await client.close();
        await server.close();
        await served.close();
      },
    },
  };
}

describeBrokerContract(
  "over a MessagePort (embedded behind it)",
  async ({ path }) => (await bridged(path)).bridged,
);

describe("the broker over a MessagePort", () => {
  let dir = "";
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  async function setup() {
    dir = mkdtempSync(join(tmpdir(), "parley-port-broker-"));
    const made = await bridged(join(dir, "broker.db"));
    cleanups.push(() => made.bridged.close().catch(() => {}));
    return made;
  }

  it("gives a delivery the thread never answered to the subscription's next consumer once the port closes", async () => {
    const { bridged: client, served, cut } = await setup();
    let started: () => void = () => {};
    const handling = new Promise<void>((resolve) => {
      started = resolve;
    });
    // The thread's handler never finishes: the thread dies with the message in hand.
    await client.subscribe("chat.test", { subscription: "history" }, () => {
      started();
      return new Promise<void>(() => {});
    });
    await client.publish("chat.test", { key: "k", payload: new Uint8Array([1]) });
    await handling;
    cut();
    const received: BrokerMessage[] = [];
    const next = await served.subscribe(
      "chat.test",
      { subscription: "history", redeliveryDelayMs: 10 },
      async (m) => {
        received.push(m);
      },
    );
    cleanups.push(() => next.close());
    const deadline = Date.now() + 5_000;
    while (received.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(received.map((m) => [...m.payload])).toEqual([[1]]);
  });

  it("fails a publish the other end never answered when the port closes", async () => {
    const { bridged: client, cut } = await setup();
    const stalled = new MessageChannel();
    const orphan = createMessagePortBroker(stalled.port2);
    // Nobody serves port1: the publish waits until the port closes, then fails instead of hanging.
    const publishing = orphan.publish("chat.test", { key: "k", payload: new Uint8Array([1]) });
    stalled.port1.close();
    await expect(publishing).rejects.toThrow(/closed before it answered/);
    cut();
    await expect(client.publish("chat.test", { key: "k", payload: new Uint8Array([2]) })).rejects.toThrow(
      /port/,
    );
  });
});
