// The producer against a stand-in for Pulsar's WebSocket endpoint that answers sends as told: how
// often a refused send is resent. A real Pulsar cannot be made to refuse the same message again at
// every resend on demand; the adapter's behaviour against the real one is in pulsar-broker.test.ts.
// The waits asserted are the backoff's (jitter pinned), with wide margins: behaviour, not speed.
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it, vi } from "vitest";
import { WebSocketServer } from "ws";
import { createLogger } from "../../logging.ts";
import { TopicProducer } from "./producer.ts";

const logger = createLogger("producer-test", "silent");
/** MessageIdData { ledgerId: 1, entryId: 2 }, as Pulsar's receipts carry it. */
const MESSAGE_ID = Buffer.from([0x08, 0x01, 0x10, 0x02]).toString("base64");

type Answer = "refuse" | "confirm";

/**
 * Answers each send by `answer(n, seq)` (n counts sends from 1, seq is the producer's sequence id
 * of the message) and records when each socket opened.
 */
async function fakePulsar(answer: (send: number, seq: number) => Answer) {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise<void>((resolve) => server.once("listening", resolve));
  const openedAt: number[] = [];
  let sends = 0;
  server.on("connection", (socket) => {
    openedAt.push(performance.now());
    socket.on("message", (data) => {
      const frame = JSON.parse(data.toString()) as { context: string };
      sends++;
      socket.send(
        JSON.stringify(
          answer(sends, Number(frame.context)) === "confirm"
            ? { result: "ok", messageId: MESSAGE_ID, context: frame.context }
            : { result: "send-error:8", errorMsg: "refused", context: frame.context },
        ),
      );
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `ws://127.0.0.1:${port}/ws/v2/producer/persistent/t/n/chat.messages`,
    openedAt,
    /** Cuts every connection, as a network failure would. */
    cut: () => {
      for (const client of server.clients) client.terminate();
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("TopicProducer resending refused sends", () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const step of cleanup.splice(0).reverse()) await step();
  });

  function producer(endpoint: string, publishTimeoutMs: number) {
    // Backoff with its jitter at the top of each range: each wait is the range's full length.
    vi.spyOn(Math, "random").mockReturnValue(0.999);
    const created = new TopicProducer({
      endpoint,
      topic: "chat.messages",
      producerName: "producer-test",
      logger,
      publishTimeoutMs,
      backoff: { initialDelayMs: 100, maxDelayMs: 5_000 },
    });
    cleanup.push(() => created.close());
    return created;
  }

  it("waits longer before each resend of a send Pulsar keeps refusing, until the publish times out", async () => {
    const pulsar = await fakePulsar(() => "refuse");
    cleanup.push(pulsar.close);
    const publishing = producer(pulsar.endpoint, 2_000).publish({ key: "k", payload: new Uint8Array([1]) });

    await expect(publishing).rejects.toThrow(/not confirmed within 2000 ms/);
    // Waits of 200, 400 and 800 ms: sockets at about 0, 0.2, 0.6 and 1.4 s. With the backoff reset by
    // every open socket (100 ms each time) it was 20 in the same 2 s.
    expect(pulsar.openedAt.length).toBeGreaterThanOrEqual(3);
    expect(pulsar.openedAt.length).toBeLessThanOrEqual(5);
  });

  it("keeps waiting longer when a later message's confirmation arrives with the refusal", async () => {
    // Each socket carries the refused message, then the next one (confirmed once, then a duplicate):
    // their receipts come back together, the confirmation after the refusal that drops the socket.
    const pulsar = await fakePulsar((_send, seq) => (seq === 0 ? "refuse" : "confirm"));
    cleanup.push(pulsar.close);
    const sending = producer(pulsar.endpoint, 2_000);
    const refused = sending.publish({ key: "k", payload: new Uint8Array([1]) });
    const confirmed = sending.publish({ key: "k", payload: new Uint8Array([2]) });

    await expect(confirmed).resolves.toBeDefined();
    await expect(refused).rejects.toThrow(/not confirmed within 2000 ms/);
    expect(pulsar.openedAt.length).toBeGreaterThanOrEqual(3);
    expect(pulsar.openedAt.length).toBeLessThanOrEqual(5);
  });

  it("goes back to the usual backoff once the refused publish is given up", async () => {
    const pulsar = await fakePulsar(() => "refuse");
    cleanup.push(pulsar.close);
    const sending = producer(pulsar.endpoint, 1_000);
    await expect(sending.publish({ key: "k", payload: new Uint8Array([1]) })).rejects.toThrow(
      /not confirmed/,
    );
    await sleep(900); // the last reconnect of the refusals is done, the socket open and idle
    const socketsBefore = pulsar.openedAt.length;
    const cutAt = performance.now();
    pulsar.cut();
    while (pulsar.openedAt.length === socketsBefore) await sleep(10);

    // A network drop after the timeout: 100 ms, not the 1.6 s the refusals in a row had reached.
    expect((pulsar.openedAt[socketsBefore] as number) - cutAt).toBeLessThan(500);
  });

  it("goes back to the usual backoff once a send is confirmed", async () => {
    // Sends 1-3 refused, 4 (the first publish, third resend) confirmed, 5 (the second publish) refused.
    const pulsar = await fakePulsar((send) => (send === 4 || send > 5 ? "confirm" : "refuse"));
    cleanup.push(pulsar.close);
    const sending = producer(pulsar.endpoint, 10_000);
    await sending.publish({ key: "k", payload: new Uint8Array([1]) });
    const socketsBefore = pulsar.openedAt.length;
    await sending.publish({ key: "k", payload: new Uint8Array([2]) });

    expect(socketsBefore).toBe(4);
    expect(pulsar.openedAt.length).toBe(5);
    // One refusal since the confirmation: a 200 ms wait, not the 1.6 s a fourth failure in a row
    // would bring.
    const wait = (pulsar.openedAt[4] as number) - (pulsar.openedAt[3] as number);
    expect(wait).toBeGreaterThanOrEqual(150);
    expect(wait).toBeLessThan(1_000);
  });
});
