import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { BrokerMessage } from "../../lib/broker/broker.ts";
import type { EmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { createLogger } from "../../lib/logging.ts";
import type { TestThreadSettings } from "./service-thread.test-worker.ts";
import type { ServiceThread } from "./service-thread.ts";
import { startServiceThread } from "./service-thread.ts";

const logger = createLogger("service-thread-test", "silent");
const entry = new URL("./service-thread.test-worker.ts", import.meta.url);
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function broker(): Promise<EmbeddedBroker> {
  const dir = mkdtempSync(join(tmpdir(), "parley-service-thread-"));
  const opened = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
  cleanups.push(async () => {
    await opened.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return opened;
}

async function eventually(what: string, done: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function start(
  settings: TestThreadSettings,
  onUnexpectedExit: (error: Error) => void,
  served: EmbeddedBroker,
): Promise<ServiceThread> {
  return startServiceThread({ name: "echo", entry, settings, broker: served, logger, onUnexpectedExit });
}

describe("a service on a worker thread", () => {
  it("serves through the main thread's broker and stops when asked, without reporting a failure", async () => {
    const served = await broker();
    const failures: Error[] = [];
    const thread = await start({ behaviour: "serve" }, (error) => failures.push(error), served);
    expect(thread.address).toBe("127.0.0.1:1");
    const out: BrokerMessage[] = [];
    const reader = await served.subscribe("test.out", { subscription: "reader" }, async (m) => {
      out.push(m);
    });
    cleanups.push(() => reader.close());
    await served.publish("test.in", { key: "k", payload: new Uint8Array([7]) });
    await eventually("the echo", () => out.length === 1);
    expect([...(out[0]?.payload ?? [])]).toEqual([7]);
    await thread.stop();
    expect(failures).toEqual([]);
  });

  it("rejects with the worker's reason when the service fails to start", async () => {
    const served = await broker();
    await expect(start({ behaviour: "fail-to-start" }, () => {}, served)).rejects.toThrow(
      /echo thread failed to start: the store could not be opened/,
    );
  });

  it("reports a thread that dies, and its unfinished work goes to the subscription's next consumer", async () => {
    const served = await broker();
    const failures: Error[] = [];
    const thread = await start({ behaviour: "serve" }, (error) => failures.push(error), served);
    cleanups.push(() => thread.stop());
    await served.publish("test.in", { key: "crash", payload: new Uint8Array([9]) });
    await eventually("the failure report", () => failures.length === 1);
    expect(failures[0]?.message).toMatch(/echo thread exited with code 3/);
    // The message the thread died holding was never acknowledged: the next consumer gets it.
    const taken: BrokerMessage[] = [];
    const next = await served.subscribe(
      "test.in",
      { subscription: "echo", redeliveryDelayMs: 10 },
      async (m) => {
        taken.push(m);
      },
    );
    cleanups.push(() => next.close());
    await eventually("the next consumer to get the message", () => taken.length === 1);
    expect(taken.map((m) => m.key)).toEqual(["crash"]);
  });
});
