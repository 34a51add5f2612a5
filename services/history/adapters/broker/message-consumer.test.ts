import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { v7 as uuidv7 } from "uuid";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ContentKind } from "../../../../gen/parley/common/v1/envelope_pb.ts";
import type { MessageStored } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import {
  MessageAcceptedSchema,
  MessageStoredSchema,
} from "../../../../gen/parley/events/v1/message_events_pb.ts";
import type { BrokerMessage, Subscription } from "../../../../lib/broker/broker.ts";
import { DEAD_LETTER_PROPERTIES, deadLetterTopic, Topics } from "../../../../lib/broker/broker.ts";
import type { EmbeddedBroker } from "../../../../lib/broker/embedded-broker.ts";
import { createEmbeddedBroker } from "../../../../lib/broker/embedded-broker.ts";
import { createLogger } from "../../../../lib/logging.ts";
import type { OutboxRelay } from "../../../../lib/outbox.ts";
import { startOutboxRelay } from "../../../../lib/outbox.ts";
import { createMemoryRateLimiter } from "../../../../lib/rate-limit.ts";
import { ConversationView } from "../../../../lib/views/conversation-view.ts";
import type { History } from "../../domain/history.ts";
import { createHistory } from "../../domain/history.ts";
import type { HistoryStore } from "../../domain/history-store.ts";
import { createSqliteHistoryStore } from "../sqlite/sqlite-history-store.ts";
import { HISTORY_SUBSCRIPTION, startMessageConsumer } from "./message-consumer.ts";

const logger = createLogger("history-consumer-test", "silent");

async function waitFor(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function acceptedEvent(conversationId: string, messageId: string, clientMessageId = uuidv7()): Uint8Array {
  return toBinary(
    MessageAcceptedSchema,
    create(MessageAcceptedSchema, {
      messageId,
      conversationId,
      sender: { userId: "alice", deviceId: "phone" },
      clientMessageId,
      envelope: {
        kind: ContentKind.TEXT,
        payload: { case: "shared", value: { ciphertext: new Uint8Array([1, 2]) } },
      },
      acceptedAt: timestampFromDate(new Date()),
      recipientDevices: [
        { userId: "bob", deviceId: "phone" },
        { userId: "alice", deviceId: "laptop" },
      ],
      membershipVersion: 1n,
    }),
  );
}

describe("chat.messages consumer on the embedded broker", () => {
  let dir: string;
  let broker: EmbeddedBroker | undefined;
  let store: HistoryStore | undefined;
  let relay: OutboxRelay | undefined;
  let subscriptions: Subscription[];
  let stored: MessageStored[];
  let deadLettered: BrokerMessage[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "parley-history-consumer-"));
    subscriptions = [];
    stored = [];
    deadLettered = [];
  });
  afterEach(async () => {
    for (const s of subscriptions) await s.close();
    await relay?.stop();
    store?.close();
    await broker?.close();
    broker = undefined;
    store = undefined;
    relay = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  /** Opens the broker and store files, follows what history publishes, and wires the domain. */
  async function open(): Promise<{ broker: EmbeddedBroker; store: HistoryStore; history: History }> {
    broker = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
    store = createSqliteHistoryStore({ path: join(dir, "parley.db") });
    const outboxRelay = startOutboxRelay(store.outbox, broker, { logger, intervalMs: 20 });
    relay = outboxRelay;
    subscriptions.push(
      await broker.follow(Topics.deliveries, {}, (m) => {
        stored.push(fromBinary(MessageStoredSchema, m.payload));
      }),
      await broker.follow(deadLetterTopic(Topics.messages, HISTORY_SUBSCRIPTION), {}, (m) => {
        deadLettered.push(m);
      }),
    );
    const history = createHistory({
      store,
      conversations: new ConversationView(),
      resendLimiter: createMemoryRateLimiter({ burst: 1, perSecond: 1 }),
      onChange: () => outboxRelay.notify(),
    });
    return { broker, store, history };
  }

  /** Per conversation, the seq of each message id in MessageStored events, and how many events each got. */
  function storedSeqs(conversationId: string): { seqs: number[]; eventsPerMessage: Map<string, number> } {
    const eventsPerMessage = new Map<string, number>();
    const seqs: number[] = [];
    for (const event of stored) {
      const m = event.message;
      if (m?.conversationId !== conversationId) continue;
      eventsPerMessage.set(m.messageId, (eventsPerMessage.get(m.messageId) ?? 0) + 1);
      if (eventsPerMessage.get(m.messageId) === 1) seqs.push(Number(m.seq));
    }
    return { seqs, eventsPerMessage };
  }

  it("stores every message once with contiguous seqs, in order, across handler crashes before and after the commit", async () => {
    const { broker, store, history } = await open();
    const conversations = [uuidv7(), uuidv7()];
    const ids = new Map<string, string[]>(conversations.map((c) => [c, []]));
    const published: string[] = [];
    for (let i = 0; i < 12; i++) {
      const conversationId = conversations[i % 2] as string;
      const messageId = uuidv7();
      ids.get(conversationId)?.push(messageId);
      published.push(messageId);
    }
    const crashBeforeCommit = published[2] as string;
    const crashAfterCommit = published[5] as string;
    const attempts = new Map<string, number>();
    const outcomes: string[] = [];
    subscriptions.push(
      await startMessageConsumer({
        broker,
        logger,
        redeliveryDelayMs: 20,
        ingest: async (message) => {
          const attempt = (attempts.get(message.messageId) ?? 0) + 1;
          attempts.set(message.messageId, attempt);
          if (message.messageId === crashBeforeCommit && attempt === 1) {
            // Dies inside the transaction, after the seq and rows were written: all rolled back.
            await store.storeMessage(
              {
                message: { ...message, seq: 0, sharedCiphertext: new Uint8Array([1]) },
                targets: [{ device: { userId: "bob", deviceId: "phone" }, ciphertext: undefined }],
                recipientUserIds: ["bob"],
                membershipVersion: 1n,
                storedAt: new Date(),
                expiresAt: new Date(Date.now() + 60_000),
              },
              () => {
                throw new Error("crash before commit");
              },
            );
          }
          const result = await history.ingest(message);
          outcomes.push(`${message.messageId}:${result.outcome}`);
          if (message.messageId === crashAfterCommit && attempt === 1)
            throw new Error("crash after commit, before ack");
          return result;
        },
      }),
    );
    for (const [i, messageId] of published.entries()) {
      const conversationId = conversations[i % 2] as string;
      await broker.publish(Topics.messages, {
        key: conversationId,
        payload: acceptedEvent(conversationId, messageId),
      });
    }
    await waitFor(
      () => new Set(stored.map((s) => s.message?.messageId)).size === published.length,
      "every MessageStored",
    );
    await waitFor(() => (attempts.get(crashAfterCommit) ?? 0) === 2, "the redelivery after the crash");

    for (const conversationId of conversations) {
      const { seqs, eventsPerMessage } = storedSeqs(conversationId);
      expect(seqs).toEqual([1, 2, 3, 4, 5, 6]);
      // In publish order, one MessageStored each.
      const byId = new Map(stored.map((s) => [s.message?.messageId, Number(s.message?.seq)]));
      expect(ids.get(conversationId)?.map((id) => byId.get(id))).toEqual([1, 2, 3, 4, 5, 6]);
      expect([...eventsPerMessage.values()]).toEqual([1, 1, 1, 1, 1, 1]);
      expect((await store.lastSeqs([conversationId])).get(conversationId)).toBe(6);
    }
    expect(attempts.get(crashBeforeCommit)).toBe(2);
    expect(outcomes.filter((o) => o.endsWith(":duplicate"))).toEqual([`${crashAfterCommit}:duplicate`]);
    const target = stored
      .find((s) => s.message?.messageId === published[0])
      ?.targets.map((t) => t.device?.deviceId);
    expect(target).toEqual(["phone", "laptop"]);
    // bob's inbox holds each message once.
    const inbox = await store.readInbox({
      device: { userId: "bob", deviceId: "phone" },
      afterPosition: 0,
      limit: 100,
      now: new Date(),
    });
    expect(inbox.items).toHaveLength(12);
  });

  it("stores a sender retry of the same client message id once", async () => {
    const { broker, history } = await open();
    subscriptions.push(await startMessageConsumer({ broker, logger, ingest: history.ingest }));
    const conversationId = uuidv7();
    const clientMessageId = uuidv7();
    const first = uuidv7();
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: acceptedEvent(conversationId, first, clientMessageId),
    });
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: acceptedEvent(conversationId, uuidv7(), clientMessageId),
    });
    const last = uuidv7();
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: acceptedEvent(conversationId, last),
    });
    await waitFor(() => stored.some((s) => s.message?.messageId === last), "the last MessageStored");
    expect(stored.map((s) => [s.message?.messageId, Number(s.message?.seq)])).toEqual([
      [first, 1],
      [last, 2],
    ]);
  });

  it("dead-letters an event it cannot decode or that breaks its rules, without holding the conversation back", async () => {
    const { broker, history } = await open();
    subscriptions.push(await startMessageConsumer({ broker, logger, ingest: history.ingest }));
    const conversationId = uuidv7();
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: new Uint8Array([0xff, 0xff, 0xff]),
    });
    const invalid = create(
      MessageAcceptedSchema,
      fromBinary(MessageAcceptedSchema, acceptedEvent(conversationId, uuidv7())),
    );
    invalid.recipientDevices = [];
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: toBinary(MessageAcceptedSchema, invalid),
    });
    const good = uuidv7();
    await broker.publish(Topics.messages, {
      key: conversationId,
      payload: acceptedEvent(conversationId, good),
    });
    await waitFor(
      () => stored.length === 1 && deadLettered.length === 2,
      "the good message and two dead letters",
    );
    expect(stored[0]?.message?.messageId).toBe(good);
    expect(Number(stored[0]?.message?.seq)).toBe(1);
    expect(deadLettered.map((m) => [m.key, m.properties[DEAD_LETTER_PROPERTIES.realTopic]])).toEqual([
      [conversationId, Topics.messages],
      [conversationId, Topics.messages],
    ]);
  });

  it("loses nothing and duplicates no seq when the consumer process is SIGKILLed right after a commit", async () => {
    const conversationId = uuidv7();
    const published = Array.from({ length: 10 }, () => uuidv7());
    {
      const publisher = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
      for (const messageId of published) {
        await publisher.publish(Topics.messages, {
          key: conversationId,
          payload: acceptedEvent(conversationId, messageId),
        });
      }
      await publisher.close();
    }
    const script = fileURLToPath(new URL("./testdata/consume-and-crash.ts", import.meta.url));
    const child = spawn(process.execPath, [script, dir, published[4] as string], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_code, s) => resolve(s)),
    );
    expect({ signal, stderr }).toEqual({ signal: "SIGKILL", stderr: "" });

    // The restarted history: the relay publishes what the dead one committed, the consumer gets
    // every unacknowledged message again.
    const { broker, store, history } = await open();
    expect((await store.lastSeqs([conversationId])).get(conversationId)).toBe(5);
    const outcomes: string[] = [];
    subscriptions.push(
      await startMessageConsumer({
        broker,
        logger,
        ingest: async (message) => {
          const result = await history.ingest(message);
          outcomes.push(result.outcome);
          return result;
        },
      }),
    );
    await waitFor(
      () => new Set(stored.map((s) => s.message?.messageId)).size === published.length,
      "every MessageStored",
    );
    const { seqs, eventsPerMessage } = storedSeqs(conversationId);
    expect(seqs).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect([...eventsPerMessage.values()].every((n) => n === 1)).toBe(true);
    const byId = new Map(stored.map((s) => [s.message?.messageId, Number(s.message?.seq)]));
    expect(published.map((id) => byId.get(id))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // At least the message it died after came back, and was recognized as stored.
    expect(outcomes.filter((o) => o === "duplicate").length).toBeGreaterThanOrEqual(1);
    expect(outcomes.filter((o) => o === "stored")).toHaveLength(5);
  });
});
