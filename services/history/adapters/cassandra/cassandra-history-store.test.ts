import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { v7 as uuidv7 } from "uuid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ContentKind } from "../../../../gen/parley/common/v1/envelope_pb.ts";
import type { MessageStored } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import {
  MessageAcceptedSchema,
  MessageStoredSchema,
} from "../../../../gen/parley/events/v1/message_events_pb.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../../../lib/broker/embedded-broker.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import { openCassandra } from "../../../../lib/cassandra/session.ts";
import type { EngineTargets } from "../../../../lib/engines.ts";
import { engineTargets, uniqueTestName } from "../../../../lib/engines.ts";
import { createLogger } from "../../../../lib/logging.ts";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import { describeHistoryStoreContract } from "../../domain/history-store.contract.ts";
import type {
  AssignedMessage,
  HistoryStore,
  RecordedReceipt,
  StoreMessageInput,
} from "../../domain/history-store.ts";
import type { DeviceRef, InboxItem } from "../../domain/model.ts";
import { createHistoryService } from "../../service.ts";
import type { CassandraHistoryStoreOptions, CommitStep } from "./cassandra-history-store.ts";
import { createCassandraHistoryStore } from "./cassandra-history-store.ts";
import type { WorkerStoreConfig } from "./open-in-worker.ts";
import { historyTables } from "./schema.ts";

const targets = engineTargets();
const T0 = new Date("2030-01-01T00:00:00.000Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);
const DAY = 86_400;
const dev = (userId: string, deviceId = "phone"): DeviceRef => ({ userId, deviceId });
const alice = dev("alice");
const aliceLaptop = dev("alice", "laptop");
const bob = dev("bob");
const bobLaptop = dev("bob", "laptop");

function message(
  conversationId: string,
  sender: DeviceRef,
  to: readonly DeviceRef[],
  options: { readonly acceptedAt?: Date; readonly expiresAt?: Date; readonly pairwise?: boolean } = {},
): StoreMessageInput {
  const acceptedAt = options.acceptedAt ?? T0;
  return {
    message: {
      messageId: uuidv7(),
      conversationId,
      seq: 0,
      sender,
      clientMessageId: uuidv7(),
      kind: 1,
      sharedCiphertext: options.pairwise === true ? undefined : new Uint8Array([7, 7]),
      acceptedAt,
      traceparent: "",
      forceTrace: false,
    },
    targets: to.map((device, i) => ({
      device,
      ciphertext: options.pairwise === true ? new Uint8Array([i + 1]) : undefined,
    })),
    recipientUserIds: [...new Set(to.map((d) => d.userId))].filter((u) => u !== sender.userId),
    membershipVersion: 1n,
    storedAt: acceptedAt,
    expiresAt: options.expiresAt ?? new Date(acceptedAt.getTime() + 30 * DAY * 1000),
  };
}

/** What the store assigned, as an event the tests read back from the outbox. */
const storedEvents = (assigned: AssignedMessage): OutboxEvent[] => [
  {
    topic: "test.stored",
    key: assigned.message.conversationId,
    payload: new TextEncoder().encode(
      JSON.stringify({
        messageId: assigned.message.messageId,
        seq: assigned.message.seq,
        targets: assigned.targets.map((t) => `${t.device.userId}/${t.device.deviceId}@${t.position}`),
      }),
    ),
  },
];
const receiptEvent = (recorded: RecordedReceipt): OutboxEvent => ({
  topic: "test.receipts",
  key: recorded.receipt.conversationId,
  payload: new TextEncoder().encode(
    JSON.stringify({
      reader: recorded.receipt.reader.deviceId,
      kind: recorded.receipt.kind,
      upToSeq: recorded.receipt.upToSeq,
    }),
  ),
});
const decoded = async (store: HistoryStore, topic: string) =>
  (await store.outbox.pending(10_000))
    .filter((e) => e.topic === topic)
    .map((e) => JSON.parse(new TextDecoder().decode(e.payload)) as Record<string, unknown>);
const seqsIn = (items: readonly InboxItem[]) =>
  items.map((i) =>
    i.kind === "message" ? i.message.seq : `${i.receipt.reader.deviceId}:${i.receipt.upToSeq}`,
  );

class Crash extends Error {}
const crashAfter = (step: CommitStep) => (reached: CommitStep) => {
  if (reached === step) throw new Crash(`crashed after ${step}`);
};
const logger = createLogger("cassandra-history-test", "silent");

/** Small buckets, so the contract's conversations span several partitions. */
const CONTRACT_BUCKET = 2;
const tablePrefix = "t_";

describe.runIf(targets)("cassandra history store (real Cassandra)", () => {
  const engines = targets as EngineTargets;
  const keyspace = uniqueTestName("parley_history");
  const clients: CassandraClient[] = [];
  let client: CassandraClient;
  /** Another process's connection. */
  let other: CassandraClient;

  const connect = async () => {
    const opened = await openCassandra({
      contactPoints: engines.cassandraContactPoints,
      localDataCenter: engines.cassandraDatacenter,
      keyspace,
      logger,
    });
    clients.push(opened);
    return opened;
  };
  const storeOn = (on: CassandraClient, options: Partial<CassandraHistoryStoreOptions> = {}) =>
    createCassandraHistoryStore({ client: on, logger, tablePrefix, ...options });
  /**
   * Every case starts from empty tables. One table set truncated per case is several times faster
   * than a table set per case (DDL costs ~100 ms a table, and dropping hundreds takes long).
   */
  const emptyTables = async () => {
    for (const table of [...Object.values(historyTables(tablePrefix))]) {
      await client.execute(`TRUNCATE ${table}`, [], { readTimeout: 60_000 });
    }
  };

  beforeAll(async () => {
    client = await connect();
    other = await connect();
    await storeOn(client);
  });
  afterAll(async () => {
    await client?.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`, [], { readTimeout: 60_000 });
    await Promise.all(clients.map((c) => c.shutdown()));
  });

  describeHistoryStoreContract("cassandra", async () => {
    await emptyTables();
    let store = await storeOn(client, { messagesPerBucket: CONTRACT_BUCKET });
    const config: WorkerStoreConfig = {
      contactPoints: engines.cassandraContactPoints,
      localDataCenter: engines.cassandraDatacenter,
      keyspace,
      tablePrefix,
      messagesPerBucket: CONTRACT_BUCKET,
    };
    return {
      store,
      async reopen() {
        store.close();
        // Another client: nothing survives in the first one's memory.
        store = await storeOn(await connect(), { messagesPerBucket: CONTRACT_BUCKET });
        return store;
      },
      worker: { module: new URL("./open-in-worker.ts", import.meta.url), config },
      dispose() {
        store.close();
      },
    };
  });

  describe("duplicates, crashes and concurrency", () => {
    it("stores each message delivered twice at once, by two processes, once and contiguously", async () => {
      await emptyTables();
      const [a, b] = [await storeOn(client), await storeOn(other)];
      const c = uuidv7();
      const inputs = Array.from({ length: 12 }, () => message(c, alice, [bob, aliceLaptop]));
      const results = await Promise.all(
        inputs.map((input) =>
          Promise.all([a.storeMessage(input, storedEvents), b.storeMessage(input, storedEvents)]),
        ),
      );
      for (const pair of results) {
        expect(pair.map((r) => r.outcome).sort()).toEqual(["duplicate", "stored"]);
        expect(pair[0]?.seq).toBe(pair[1]?.seq);
      }
      const seqs = results.map((pair) => pair[0]?.seq ?? 0);
      expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      expect((await a.lastSeqs([c])).get(c)).toBe(12);
      for (const device of [bob, aliceLaptop]) {
        const page = await a.readInbox({ device, afterPosition: 0, limit: 100, now: at(1) });
        expect(page.items.map((i) => i.position)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
        expect(seqsIn(page.items)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      }
      // At least once, and every copy of a message's event says the same.
      const events = await decoded(a, "test.stored");
      for (const [i, input] of inputs.entries()) {
        const copies = events.filter((e) => e.messageId === input.message.messageId);
        expect(copies.length).toBeGreaterThanOrEqual(1);
        expect(new Set(copies.map((e) => JSON.stringify(e))).size).toBe(1);
        expect(copies[0]?.seq).toBe(seqs[i]);
      }
    });

    const messageSteps: CommitStep[] = [
      "message:staged",
      "message:claimed",
      "message:written",
      "message:placed",
      "message:published",
      "message:released",
    ];

    it.each(messageSteps)("a redelivery finishes a store step that crashed after %s", async (step) => {
      await emptyTables();
      const crashing = await storeOn(client, { afterStep: crashAfter(step) });
      const survivor = await storeOn(other, { takeOverAfterMs: 0 });
      const c = uuidv7();
      const first = message(c, alice, [bob, bobLaptop, aliceLaptop], { pairwise: true });
      await expect(crashing.storeMessage(first, storedEvents)).rejects.toThrow(Crash);

      const again = await survivor.storeMessage(first, storedEvents);
      expect(again).toMatchObject({ outcome: step === "message:staged" ? "stored" : "duplicate", seq: 1 });
      expect(
        await survivor.storeMessage(message(c, alice, [bob, bobLaptop, aliceLaptop]), storedEvents),
      ).toEqual({
        outcome: "stored",
        seq: 2,
      });
      expect(await survivor.storeMessage(first, storedEvents)).toMatchObject({
        outcome: "duplicate",
        seq: 1,
      });
      expect((await survivor.lastSeqs([c])).get(c)).toBe(2);
      for (const device of [bob, bobLaptop, aliceLaptop]) {
        const page = await survivor.readInbox({ device, afterPosition: 0, limit: 100, now: at(1) });
        expect(page.items.map((i) => [i.position, seqsIn([i])[0]])).toEqual([
          [1, 1],
          [2, 2],
        ]);
      }
      const listed = await survivor.listMessages({
        conversationId: c,
        device: bobLaptop,
        afterSeq: 0,
        beforeSeq: 0,
        order: "oldest_first",
        limit: 10,
        now: at(1),
      });
      expect(listed.messages.map((m) => [m.seq, [...m.ciphertext]])).toEqual([
        [1, [2]],
        [2, [7, 7]],
      ]);
      const events = await decoded(survivor, "test.stored");
      const firstEvents = events.filter((e) => e.messageId === first.message.messageId);
      expect(firstEvents.length).toBeGreaterThanOrEqual(1);
      for (const e of firstEvents) {
        expect(e).toEqual({
          messageId: first.message.messageId,
          seq: 1,
          targets: ["bob/phone@1", "bob/laptop@1", "alice/laptop@1"],
        });
      }
      expect(events.filter((e) => e.seq === 2)).toHaveLength(1);
    });

    it.each(["message:claimed", "message:written", "message:placed", "message:published"] as CommitStep[])(
      "the conversation's next message first finishes a step that crashed after %s",
      async (step) => {
        await emptyTables();
        const crashing = await storeOn(client, { afterStep: crashAfter(step) });
        const survivor = await storeOn(other, { takeOverAfterMs: 0 });
        const c = uuidv7();
        const first = message(c, alice, [bob]);
        await expect(crashing.storeMessage(first, storedEvents)).rejects.toThrow(Crash);
        expect((await survivor.lastSeqs([c])).get(c)).toBe(0);

        expect(await survivor.storeMessage(message(c, alice, [bob]), storedEvents)).toEqual({
          outcome: "stored",
          seq: 2,
        });
        const page = await survivor.readInbox({ device: bob, afterPosition: 0, limit: 100, now: at(1) });
        expect(
          page.items.map((i) => (i.kind === "message" ? [i.position, i.message.messageId] : [])),
        ).toEqual([
          [1, first.message.messageId],
          [2, expect.any(String)],
        ]);
        const events = await decoded(survivor, "test.stored");
        expect(events.filter((e) => e.messageId === first.message.messageId).length).toBeGreaterThanOrEqual(
          1,
        );
        expect(await survivor.storeMessage(first, storedEvents)).toEqual({
          outcome: "duplicate",
          by: "message_id",
          messageId: first.message.messageId,
          seq: 1,
        });
      },
    );

    const receiptSteps: CommitStep[] = [
      "receipt:claimed",
      "receipt:marked",
      "receipt:cleared",
      "receipt:placed",
      "receipt:published",
    ];

    it.each(receiptSteps)(
      "the member's next receipt first finishes one that crashed after %s",
      async (step) => {
        await emptyTables();
        const crashing = await storeOn(client, { afterStep: crashAfter(step) });
        const survivor = await storeOn(other, { takeOverAfterMs: 0 });
        const c = uuidv7();
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) {
          const input = message(c, alice, [bob, bobLaptop, aliceLaptop]);
          ids.push(input.message.messageId);
          await survivor.storeMessage(input, storedEvents);
        }
        const mark = (store: HistoryStore, reader: DeviceRef, upToSeq: number, seconds: number) =>
          store.recordReceipt(
            {
              conversationId: c,
              reader,
              kind: "read",
              target: { upToSeq },
              at: at(seconds),
              now: at(seconds),
              receiptExpiresAt: at(seconds + 30 * DAY),
              devicesSeenSince: at(seconds - 30 * DAY),
            },
            receiptEvent,
          );
        await expect(mark(crashing, bob, 2, 10)).rejects.toThrow(Crash);
        expect(await mark(survivor, bobLaptop, 3, 20)).toMatchObject({
          recorded: true,
          state: { deliveredUpToSeq: 3, readUpToSeq: 3 },
        });

        // The crashed receipt's effects: the phone's inbox cleared up to 2, its marks and receipt items.
        const inbox = async (device: DeviceRef) =>
          seqsIn((await survivor.readInbox({ device, afterPosition: 0, limit: 100, now: at(30) })).items);
        expect(await inbox(bob)).toEqual([3, "laptop:3"]);
        expect(await inbox(bobLaptop)).toEqual(["phone:2"]);
        expect(await inbox(alice)).toEqual(["phone:2", "laptop:3"]);
        const receipts = await survivor.messageReceipts({
          conversationId: c,
          messageId: ids[0] as string,
          now: at(30),
        });
        expect(receipts?.recipients).toEqual([{ userId: "bob", deliveredAt: at(10), readAt: at(10) }]);
        const third = await survivor.messageReceipts({
          conversationId: c,
          messageId: ids[2] as string,
          now: at(30),
        });
        expect(third?.recipients).toEqual([{ userId: "bob", deliveredAt: at(20), readAt: at(20) }]);
        const events = await decoded(survivor, "test.receipts");
        expect(events.filter((e) => e.reader === "phone").length).toBeGreaterThanOrEqual(1);
        expect(events.filter((e) => e.reader === "laptop")).toEqual([
          { reader: "laptop", kind: "read", upToSeq: 3 },
        ]);
        expect((await survivor.receiptStates(c, ["bob"])).get("bob")).toMatchObject({
          deliveredUpToSeq: 3,
          readUpToSeq: 3,
          readMovedAt: at(20),
        });
      },
    );

    it("serializes one member's receipts from two processes without losing a mark", async () => {
      await emptyTables();
      const [a, b] = [await storeOn(client), await storeOn(other)];
      const c = uuidv7();
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) {
        const input = message(c, alice, [bob, bobLaptop]);
        ids.push(input.message.messageId);
        await a.storeMessage(input, storedEvents);
      }
      const byId = (store: HistoryStore, reader: DeviceRef, seqs: number[]) =>
        store.recordReceipt(
          {
            conversationId: c,
            reader,
            kind: "delivered",
            target: { messageIds: seqs.map((seq) => ids[seq - 1] as string) },
            at: at(10),
            now: at(10),
            receiptExpiresAt: at(10 + 30 * DAY),
            devicesSeenSince: at(10 - 30 * DAY),
          },
          receiptEvent,
        );
      await Promise.all([byId(a, bob, [1, 3, 5]), byId(b, bobLaptop, [2, 4, 6])]);
      expect((await a.receiptStates(c, ["bob"])).get("bob")?.deliveredUpToSeq).toBe(6);
    });

    it("never lets a reader pass a position whose item is still to come", async () => {
      await emptyTables();
      const [a, b] = [await storeOn(client), await storeOn(other)];
      const reader = dev("reader");
      const conversations = Array.from({ length: 4 }, () => uuidv7());
      const total = 40;
      const writes = [a, b].map(async (store, w) => {
        for (let i = 0; i < total / 2; i++) {
          const c = conversations[(i + w) % conversations.length] as string;
          await store.storeMessage(message(c, dev(`writer${w}`), [reader]), storedEvents);
        }
      });
      const seen: string[] = [];
      const positions: number[] = [];
      let cursor = 0;
      const deadline = Date.now() + 20_000;
      while (seen.length < total && Date.now() < deadline) {
        const page = await a.readInbox({ device: reader, afterPosition: cursor, limit: 3, now: at(1) });
        for (const item of page.items) {
          if (item.kind === "message") seen.push(item.message.messageId);
          positions.push(item.position);
          cursor = item.position;
        }
      }
      await Promise.all(writes);
      expect(new Set(seen).size).toBe(total);
      expect(seen).toHaveLength(total);
      expect(positions).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    });

    it("lets Cassandra expire what retention ends, and lists past expired buckets", async () => {
      await emptyTables();
      const store = await storeOn(client, { messagesPerBucket: 2 });
      const now = new Date();
      const soon = new Date(now.getTime() + 2000);
      const c = uuidv7();
      for (let i = 0; i < 4; i++) {
        await store.storeMessage(
          message(c, alice, [bob], { acceptedAt: now, expiresAt: soon }),
          storedEvents,
        );
      }
      for (let i = 0; i < 2; i++)
        await store.storeMessage(message(c, alice, [bob], { acceptedAt: now }), storedEvents);
      const ttl = await client.execute(
        `SELECT TTL(message_id) AS ttl FROM ${historyTables(tablePrefix).messages} WHERE conversation_id = ? AND bucket = ?`,
        [c, 0],
        { prepare: true },
      );
      expect(ttl.rows.map((r) => Number(r.get("ttl")))).toEqual([2, 2].map(() => expect.any(Number)));
      for (const row of ttl.rows) expect(Number(row.get("ttl"))).toBeLessThanOrEqual(2);

      await new Promise((resolve) => setTimeout(resolve, 3000));
      const buckets = await client.execute(
        `SELECT bucket FROM ${historyTables(tablePrefix).messageBuckets} WHERE conversation_id = ?`,
        [c],
        { prepare: true },
      );
      expect(buckets.rows.map((r) => Number(r.get("bucket")))).toEqual([2]);
      const later = new Date(now.getTime() + 3000);
      const listed = await store.listMessages({
        conversationId: c,
        device: bob,
        afterSeq: 0,
        beforeSeq: 0,
        order: "oldest_first",
        limit: 10,
        now: later,
      });
      expect([listed.messages.map((m) => m.seq), listed.lastSeq]).toEqual([[5, 6], 6]);
      const page = await store.readInbox({ device: bob, afterPosition: 0, limit: 10, now: later });
      expect([seqsIn(page.items), page.lastPosition]).toEqual([[5, 6], 6]);
      expect(await store.oldestUnacknowledgedPosition(bob, later)).toBe(5);
      expect(await store.sweepExpired(later)).toBe(0);
    });
  });

  it("serves the history service in place of the SQLite file (createHistoryService({ store }))", async () => {
    await emptyTables();
    const dir = mkdtempSync(join(tmpdir(), "parley-history-cassandra-"));
    const broker = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
    const stored: MessageStored[] = [];
    const following = await broker.follow(Topics.deliveries, {}, (m) => {
      stored.push(fromBinary(MessageStoredSchema, m.payload));
    });
    const service = await createHistoryService({
      store: await storeOn(client),
      broker,
      logger,
      redeliveryDelayMs: 20,
    });
    try {
      const conversationId = uuidv7();
      const accepted = (messageId: string) =>
        toBinary(
          MessageAcceptedSchema,
          create(MessageAcceptedSchema, {
            messageId,
            conversationId,
            sender: alice,
            clientMessageId: uuidv7(),
            envelope: {
              kind: ContentKind.TEXT,
              payload: {
                case: "perDevice",
                value: {
                  recipients: [
                    { userId: "bob", devices: [{ deviceId: "phone", ciphertext: new Uint8Array([0xb0]) }] },
                  ],
                },
              },
            },
            acceptedAt: timestampFromDate(new Date()),
            recipientDevices: [bob],
            membershipVersion: 1n,
          }),
        );
      const ids = [uuidv7(), uuidv7(), uuidv7()];
      // The second message comes twice (a broker redelivery): stored once.
      for (const id of [ids[0], ids[1], ids[1], ids[2]] as string[]) {
        await broker.publish(Topics.messages, { key: conversationId, payload: accepted(id) });
      }
      const deadline = Date.now() + 20_000;
      while (stored.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const page = await service.history.sync({ device: bob, cursor: new Uint8Array(), pageSize: 10 });
      expect(
        page.items.map((i) => (i.kind === "message" ? [i.message.messageId, i.message.seq] : [])),
      ).toEqual(ids.map((id, i) => [id, i + 1]));
      // The cursor MessageStored carried for bob is the one Sync gives.
      expect(stored.map((s) => [...(s.targets[0]?.cursor ?? [])])).toEqual(
        page.items.map((i) => [...i.cursor]),
      );
      expect(await service.sweepNow()).toBe(0);
    } finally {
      await service.stop();
      await following.close();
      await broker.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
