// The contract every HistoryStore adapter passes (embedded SQLite now, Cassandra later). It speaks
// only through the port; each adapter's test file calls describeHistoryStoreContract.
import { Worker } from "node:worker_threads";
import { v7 as uuidv7 } from "uuid";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { OutboxEvent } from "../../../lib/outbox.ts";
import type { AssignedMessage, HistoryStore, RecordedReceipt, RecordReceiptInput } from "./history-store.ts";
import type { DeviceRef, InboxItem, StoredMessage } from "./model.ts";

export interface HistoryStoreUnderTest {
  /** A fresh, empty store. */
  readonly store: HistoryStore;
  /** Closes `store` and opens the same storage again (durability). */
  reopen(): Promise<HistoryStore>;
  /**
   * How a worker thread opens another handle on the same storage: `module` exports
   * `openHistoryStore(config)`; `config` must survive structured cloning.
   */
  readonly worker: { readonly module: URL; readonly config: unknown };
  /** Closes what is still open and removes the storage. */
  dispose(): Promise<void> | void;
}

export type MakeHistoryStore = () => Promise<HistoryStoreUnderTest>;

const T0 = new Date("2030-01-01T00:00:00.000Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);
const DAY = 86_400;

const conversation = () => uuidv7();
const dev = (userId: string, deviceId = "phone"): DeviceRef => ({ userId, deviceId });
const bytes = (...values: number[]) => new Uint8Array(values);
const plain = (value: Uint8Array | undefined) => (value === undefined ? undefined : [...value]);

interface MessageSpec {
  readonly conversationId: string;
  readonly sender: DeviceRef;
  /** Recipient devices; with `pairwise`, each device's ciphertext is [seq-independent] [index + 1]. */
  readonly to: readonly DeviceRef[];
  readonly pairwise?: boolean;
  readonly messageId?: string;
  readonly clientMessageId?: string;
  /** Seconds after T0. */
  readonly acceptedAt?: number;
  /** Seconds after T0. */
  readonly expiresAt?: number;
}

function input(spec: MessageSpec) {
  const message: StoredMessage = {
    messageId: spec.messageId ?? uuidv7(),
    conversationId: spec.conversationId,
    seq: 0,
    sender: spec.sender,
    clientMessageId: spec.clientMessageId ?? uuidv7(),
    kind: 1,
    sharedCiphertext: spec.pairwise === true ? undefined : bytes(9, 9),
    acceptedAt: at(spec.acceptedAt ?? 0),
    traceparent: "",
    forceTrace: false,
  };
  return {
    message,
    targets: spec.to.map((device, i) => ({
      device,
      ciphertext: spec.pairwise === true ? bytes(i + 1) : undefined,
    })),
    recipientUserIds: [...new Set(spec.to.map((d) => d.userId))].filter((u) => u !== spec.sender.userId),
    membershipVersion: 1n,
    storedAt: at(spec.acceptedAt ?? 0),
    expiresAt: at(spec.expiresAt ?? 30 * DAY),
  };
}

/** A stand-in event recording what the store assigned, so tests can read it back from the outbox. */
function assignedEvent(assigned: AssignedMessage): OutboxEvent {
  const body = {
    messageId: assigned.message.messageId,
    seq: assigned.message.seq,
    targets: assigned.targets.map((t) => [
      t.device.userId,
      t.device.deviceId,
      t.position,
      plain(t.ciphertext),
    ]),
  };
  return {
    topic: "test.stored",
    key: assigned.message.conversationId,
    payload: new TextEncoder().encode(JSON.stringify(body)),
  };
}

function receiptEvent(recorded: RecordedReceipt): OutboxEvent {
  const body = {
    kind: recorded.receipt.kind,
    upToSeq: recorded.receipt.upToSeq,
    ids: recorded.receipt.messageIds.map((m) => m.messageId),
    notify: recorded.notifyUserIds,
  };
  return {
    topic: "test.receipts",
    key: recorded.receipt.conversationId,
    payload: new TextEncoder().encode(JSON.stringify(body)),
  };
}

const decode = (event: OutboxEvent) =>
  JSON.parse(new TextDecoder().decode(event.payload)) as Record<string, unknown>;

export function describeHistoryStoreContract(name: string, makeStore: MakeHistoryStore): void {
  describe(`HistoryStore contract: ${name}`, () => {
    let fixture: HistoryStoreUnderTest;
    let store: HistoryStore;

    beforeEach(async () => {
      fixture = await makeStore();
      store = fixture.store;
    });
    afterEach(async () => {
      await fixture.dispose();
    });

    const put = (spec: MessageSpec) => store.storeMessage(input(spec), (a) => [assignedEvent(a)]);
    const pending = async (topic: string) =>
      (await store.outbox.pending(10_000)).filter((e) => e.topic === topic).map(decode);
    const inbox = async (device: DeviceRef, after = 0, limit = 1000, now = at(1)) =>
      store.readInbox({ device, afterPosition: after, limit, now });
    const seqsIn = (items: readonly InboxItem[]) =>
      items.map((i) => (i.kind === "message" ? i.message.seq : `r${i.receipt.upToSeq}`));
    const mark = (
      reader: DeviceRef,
      conversationId: string,
      kind: "delivered" | "read",
      target: RecordReceiptInput["target"],
      seconds = 10,
    ) =>
      store.recordReceipt(
        {
          conversationId,
          reader,
          kind,
          target,
          at: at(seconds),
          now: at(seconds),
          receiptExpiresAt: at(seconds + 30 * DAY),
          devicesSeenSince: at(seconds - 30 * DAY),
        },
        receiptEvent,
      );

    it("assigns contiguous seqs from 1 per conversation and inbox positions from 1 per device", async () => {
      const a = conversation();
      const b = conversation();
      const bob = dev("bob");
      const results = [];
      results.push(await put({ conversationId: a, sender: dev("alice"), to: [bob, dev("alice", "laptop")] }));
      results.push(await put({ conversationId: b, sender: dev("carol"), to: [bob] }));
      results.push(await put({ conversationId: a, sender: bob, to: [dev("alice"), dev("alice", "laptop")] }));
      results.push(await put({ conversationId: a, sender: dev("alice"), to: [bob] }));
      results.push(await put({ conversationId: b, sender: dev("carol"), to: [bob] }));
      expect(results.map((r) => [r.outcome, r.seq])).toEqual([
        ["stored", 1],
        ["stored", 1],
        ["stored", 2],
        ["stored", 3],
        ["stored", 2],
      ]);
      expect(Object.fromEntries(await store.lastSeqs([a, b, conversation()]))).toMatchObject({
        [a]: 3,
        [b]: 2,
      });

      const bobInbox = await inbox(bob);
      expect(bobInbox.items.map((i) => i.position)).toEqual([1, 2, 3, 4]);
      expect(bobInbox.lastPosition).toBe(4);
      expect(
        bobInbox.items.map((i) => (i.kind === "message" ? [i.message.conversationId, i.message.seq] : [])),
      ).toEqual([
        [a, 1],
        [b, 1],
        [a, 3],
        [b, 2],
      ]);
      // The sending device gets no inbox item; the sender's other device does.
      expect((await inbox(dev("alice"))).items.map((i) => i.position)).toEqual([1]);
      expect((await inbox(dev("alice", "laptop"))).items.map((i) => i.position)).toEqual([1, 2]);

      const events = await pending("test.stored");
      expect(events.map((e) => e.seq)).toEqual([1, 1, 2, 3, 2]);
      expect(events[0]?.targets).toEqual([
        ["bob", "phone", 1, null],
        ["alice", "laptop", 1, null],
      ]);
      expect(events[3]?.targets).toEqual([["bob", "phone", 3, null]]);
    });

    it("keeps seqs contiguous under concurrent appends to one conversation from several workers", async () => {
      const conversationId = conversation();
      const workers = 4;
      const perWorker = 25;
      const barrier = new SharedArrayBuffer(8);
      const gate = new Int32Array(barrier);
      const threads = Array.from(
        { length: workers },
        (_, worker) =>
          new Worker(new URL("./history-store.contract-worker.ts", import.meta.url), {
            workerData: {
              module: fixture.worker.module.href,
              config: fixture.worker.config,
              conversationId,
              count: perWorker,
              worker,
              barrier,
            },
          }),
      );
      const answers = threads.map(
        (thread) =>
          new Promise<number[]>((resolve, reject) => {
            thread.once("message", resolve);
            thread.once("error", reject);
          }),
      );
      // Every worker has opened its own handle: let them all go at once.
      while (Atomics.load(gate, 0) < workers) Atomics.wait(gate, 0, Atomics.load(gate, 0), 50);
      Atomics.store(gate, 1, 1);
      Atomics.notify(gate, 1);
      const seqs = (await Promise.all(answers)).flat();
      await Promise.all(threads.map((t) => t.terminate()));

      const total = workers * perWorker;
      expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect((await store.lastSeqs([conversationId])).get(conversationId)).toBe(total);
      // The reader's inbox holds every message once, in seq order.
      const page = await inbox(dev("reader"), 0, 1000);
      expect(page.items.map((i) => i.position)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect(seqsIn(page.items)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    });

    it("stores a redelivered message once and keeps its first seq", async () => {
      const c = conversation();
      const spec = { conversationId: c, sender: dev("alice"), to: [dev("bob")], messageId: uuidv7() };
      expect(await put(spec)).toEqual({ outcome: "stored", seq: 1 });
      expect(await put(spec)).toEqual({
        outcome: "duplicate",
        by: "message_id",
        messageId: spec.messageId,
        seq: 1,
      });
      expect(await put({ conversationId: c, sender: dev("alice"), to: [dev("bob")] })).toEqual({
        outcome: "stored",
        seq: 2,
      });
      expect(seqsIn((await inbox(dev("bob"))).items)).toEqual([1, 2]);
      expect((await pending("test.stored")).map((e) => e.seq)).toEqual([1, 2]);
    });

    it("stores a sender retry with a new message id once (dedup by sender device and client id)", async () => {
      const c = conversation();
      const first = uuidv7();
      const clientMessageId = uuidv7();
      await put({
        conversationId: c,
        sender: dev("alice"),
        to: [dev("bob")],
        messageId: first,
        clientMessageId,
      });
      const retry = await put({ conversationId: c, sender: dev("alice"), to: [dev("bob")], clientMessageId });
      expect(retry).toEqual({ outcome: "duplicate", by: "client_message_id", messageId: first, seq: 1 });
      // The same client id from another device of the user is another message.
      expect(
        (await put({ conversationId: c, sender: dev("alice", "laptop"), to: [dev("bob")], clientMessageId }))
          .seq,
      ).toBe(2);
      expect(seqsIn((await inbox(dev("bob"))).items)).toEqual([1, 2]);
    });

    it("leaves nothing behind and uses no seq when the step fails", async () => {
      const c = conversation();
      const spec = { conversationId: c, sender: dev("alice"), to: [dev("bob")], messageId: uuidv7() };
      await expect(
        store.storeMessage(input(spec), () => {
          throw new Error("crash before commit");
        }),
      ).rejects.toThrow("crash before commit");
      expect((await store.lastSeqs([c])).get(c)).toBe(0);
      expect((await inbox(dev("bob"))).items).toEqual([]);
      expect(await pending("test.stored")).toEqual([]);
      // The redelivery stores it with the seq and position the failed attempt did not keep.
      expect(await put(spec)).toEqual({ outcome: "stored", seq: 1 });
      expect((await inbox(dev("bob"))).items.map((i) => i.position)).toEqual([1]);
    });

    it("reads an inbox strictly after a position, in pages, and never places an item before a handed-out one", async () => {
      const c = conversation();
      const bob = dev("bob");
      for (let i = 0; i < 3; i++) await put({ conversationId: c, sender: dev("alice"), to: [bob] });
      const first = await inbox(bob, 0, 2);
      expect(first.items.map((i) => i.position)).toEqual([1, 2]);
      expect(first.more).toBe(true);
      const second = await inbox(bob, 2, 2);
      expect(second.items.map((i) => i.position)).toEqual([3]);
      expect(second.more).toBe(false);
      // bob acknowledges seq 1, and new messages arrive: they land after everything handed out.
      await mark(bob, c, "delivered", { upToSeq: 1 });
      await put({ conversationId: c, sender: dev("alice"), to: [bob] });
      const third = await inbox(bob, 3, 10);
      expect(third.items.map((i) => [i.position, i.kind === "message" ? i.message.seq : 0])).toEqual([
        [4, 4],
      ]);
      expect(seqsIn((await inbox(bob)).items)).toEqual([2, 3, 4]);
      expect((await inbox(dev("nobody"))).lastPosition).toBe(0);
    });

    it("lists a conversation by seq range and order, with the reading device's ciphertext", async () => {
      const c = conversation();
      const phone = dev("bob");
      const tablet = dev("bob", "tablet");
      await put({ conversationId: c, sender: dev("alice"), to: [phone], pairwise: true }); // tablet not yet registered
      await put({ conversationId: c, sender: dev("alice"), to: [phone, tablet] }); // shared
      await put({ conversationId: c, sender: dev("alice"), to: [tablet, phone], pairwise: true });
      await put({ conversationId: conversation(), sender: dev("alice"), to: [tablet] });
      const list = (
        device: DeviceRef,
        range: Partial<{ afterSeq: number; beforeSeq: number; limit: number }>,
        order: "newest_first" | "oldest_first",
      ) =>
        store.listMessages({
          conversationId: c,
          device,
          afterSeq: range.afterSeq ?? 0,
          beforeSeq: range.beforeSeq ?? 0,
          order,
          limit: range.limit ?? 100,
          now: at(1),
        });
      const newest = await list(tablet, {}, "newest_first");
      expect(newest.messages.map((m) => [m.seq, [...m.ciphertext]])).toEqual([
        [3, [1]],
        [2, [9, 9]],
        [1, []],
      ]);
      expect(newest.messages.map((m) => m.sharedCiphertext !== undefined)).toEqual([false, true, false]);
      expect(newest.lastSeq).toBe(3);
      expect(newest.more).toBe(false);
      expect((await list(phone, {}, "oldest_first")).messages.map((m) => [m.seq, [...m.ciphertext]])).toEqual(
        [
          [1, [1]],
          [2, [9, 9]],
          [3, [2]],
        ],
      );
      const paged = await list(phone, { limit: 2 }, "oldest_first");
      expect([paged.messages.map((m) => m.seq), paged.more]).toEqual([[1, 2], true]);
      expect(
        (await list(phone, { afterSeq: 1, beforeSeq: 3 }, "newest_first")).messages.map((m) => m.seq),
      ).toEqual([2]);
      expect((await list(phone, { afterSeq: 3 }, "oldest_first")).messages).toEqual([]);
      // The sending device has no pairwise ciphertext of its own.
      expect((await list(dev("alice"), {}, "oldest_first")).messages.map((m) => m.ciphertext.length)).toEqual(
        [0, 2, 0],
      );
    });

    it("clears acknowledged messages from the acknowledging device's inbox only", async () => {
      const c = conversation();
      const phone = dev("bob");
      const laptop = dev("bob", "laptop");
      const ids: string[] = [];
      for (let i = 0; i < 4; i++) {
        const messageId = uuidv7();
        ids.push(messageId);
        await put({ conversationId: c, sender: dev("alice"), to: [phone, laptop], messageId });
      }
      await mark(phone, c, "delivered", { upToSeq: 2 });
      expect(seqsIn((await inbox(phone)).items)).toEqual([3, 4]);
      await mark(phone, c, "read", { messageIds: [ids[3] as string, uuidv7()] });
      expect(seqsIn((await inbox(phone)).items)).toEqual([3]);
      // The laptop keeps its messages, plus bob's read receipt from the phone (read watermark still 0:
      // seqs 1 to 3 were only delivered).
      expect(seqsIn((await inbox(laptop)).items)).toEqual([1, 2, 3, 4, "r0"]);
      // The oldest message still waiting for the phone's ack, and none once all are acknowledged.
      const remaining = (await inbox(phone)).items[0];
      expect(await store.oldestUnacknowledgedPosition(phone, at(1))).toBe(remaining?.position);
      await mark(phone, c, "delivered", { upToSeq: 4 });
      expect(await store.oldestUnacknowledgedPosition(phone, at(1))).toBeUndefined();
    });

    it("advances each member's watermarks over contiguous acknowledgements only", async () => {
      const c = conversation();
      const alice = dev("alice");
      const bob = dev("bob");
      const ids: string[] = [];
      const send = async (sender: DeviceRef, to: DeviceRef) => {
        const messageId = uuidv7();
        ids.push(messageId);
        await put({ conversationId: c, sender, to: [to], messageId });
      };
      await send(alice, bob); // 1
      await send(alice, bob); // 2
      await send(alice, bob); // 3
      await send(bob, alice); // 4: bob's own, never holds bob back
      await send(alice, bob); // 5
      const id = (seq: number) => ids[seq - 1] as string;

      let result = await mark(bob, c, "read", { messageIds: [id(2)] });
      expect(result).toMatchObject({ recorded: true, state: { deliveredUpToSeq: 0, readUpToSeq: 0 } });
      result = await mark(bob, c, "read", { messageIds: [id(1)] });
      expect(result.state).toEqual({ deliveredUpToSeq: 2, readUpToSeq: 2 });
      result = await mark(bob, c, "delivered", { messageIds: [id(3), id(4)] });
      expect(result.state).toEqual({ deliveredUpToSeq: 4, readUpToSeq: 2 });
      expect(result.receipt?.receipt.messageIds.map((m) => m.seq)).toEqual([3]);
      result = await mark(bob, c, "read", { upToSeq: 99 }); // clamped to the last seq
      expect(result.state).toEqual({ deliveredUpToSeq: 5, readUpToSeq: 5 });
      expect(result.receipt?.receipt.upToSeq).toBe(5);
      // Nothing new: not recorded, no event.
      const before = (await pending("test.receipts")).length;
      for (const again of [
        await mark(bob, c, "read", { upToSeq: 5 }),
        await mark(bob, c, "delivered", { messageIds: [id(1)] }),
        await mark(bob, c, "read", { messageIds: [uuidv7()] }),
      ]) {
        expect(again).toEqual({
          recorded: false,
          state: { deliveredUpToSeq: 5, readUpToSeq: 5 },
          receipt: undefined,
        });
      }
      expect((await pending("test.receipts")).length).toBe(before);
      expect(await pending("test.receipts")).toEqual([
        { kind: "read", upToSeq: 0, ids: [id(2)], notify: ["alice", "bob"] },
        { kind: "read", upToSeq: 2, ids: [id(1)], notify: ["alice", "bob"] },
        { kind: "delivered", upToSeq: 4, ids: [id(3)], notify: ["alice"] },
        { kind: "read", upToSeq: 5, ids: [], notify: ["alice", "bob"] },
      ]);
      // alice's own watermark is untouched by bob's receipts.
      expect(await store.receiptStates(c, ["alice", "bob"])).toEqual(
        new Map([
          [
            "bob",
            {
              userId: "bob",
              deliveredUpToSeq: 5,
              readUpToSeq: 5,
              deliveredMovedAt: at(10),
              readMovedAt: at(10),
            },
          ],
        ]),
      );
    });

    it("puts receipts in the senders' and the reader's other devices' inboxes, one per reader and kind", async () => {
      const c = conversation();
      const alicePhone = dev("alice");
      const aliceLaptop = dev("alice", "laptop");
      const bobPhone = dev("bob");
      const bobLaptop = dev("bob", "laptop");
      for (let i = 0; i < 3; i++) {
        await put({ conversationId: c, sender: alicePhone, to: [aliceLaptop, bobPhone, bobLaptop] });
      }
      await mark(bobPhone, c, "read", { upToSeq: 1 });
      const receipts = async (device: DeviceRef) =>
        (await inbox(device, 0, 1000, at(20))).items.flatMap((i) =>
          i.kind === "receipt"
            ? [[i.position, i.receipt.kind, i.receipt.reader.deviceId, i.receipt.upToSeq]]
            : [],
        );
      expect(await receipts(alicePhone)).toEqual([[1, "read", "phone", 1]]);
      expect(await receipts(aliceLaptop)).toEqual([[4, "read", "phone", 1]]);
      expect(await receipts(bobLaptop)).toEqual([[4, "read", "phone", 1]]);
      expect(await receipts(bobPhone)).toEqual([]);
      // A later receipt of the same reader and kind replaces the earlier one, at a new position.
      await mark(bobPhone, c, "read", { upToSeq: 2 });
      expect(await receipts(alicePhone)).toEqual([[2, "read", "phone", 2]]);
      // Another reader device, or another kind, is another item.
      await mark(bobLaptop, c, "delivered", { upToSeq: 3 });
      expect(await receipts(alicePhone)).toEqual([
        [2, "read", "phone", 2],
        [3, "delivered", "laptop", 3],
      ]);
      // By id, the ids above the watermark travel too.
      const more = uuidv7();
      await put({ conversationId: c, sender: alicePhone, to: [bobPhone], messageId: uuidv7() });
      await put({ conversationId: c, sender: alicePhone, to: [bobPhone], messageId: more });
      await mark(bobPhone, c, "read", { messageIds: [more] });
      const latest = (await inbox(alicePhone, 3, 10, at(20))).items[0];
      expect(latest?.kind === "receipt" ? latest.receipt.messageIds : undefined).toEqual([
        { messageId: more, seq: 5 },
      ]);
    });

    it("drops a removed device's inbox, keeps what came after, and gives late messages no item for it", async () => {
      const c = conversation();
      const alice = dev("alice");
      const bobPhone = dev("bob");
      const bobLaptop = dev("bob", "laptop");
      await put({ conversationId: c, sender: alice, to: [bobPhone, bobLaptop], acceptedAt: 1 });
      await put({ conversationId: c, sender: alice, to: [bobPhone, bobLaptop], acceptedAt: 2 });
      await mark(bobLaptop, c, "read", { upToSeq: 1 }, 3); // a receipt in bob/phone's inbox
      expect(seqsIn((await inbox(bobPhone, 0, 1000, at(4))).items)).toEqual([1, 2, "r1"]);

      // Removed at 5 s: the inbox goes (messages and receipts), the other device keeps its own.
      expect(await store.dropDevice({ device: bobPhone, removedAt: at(5) })).toBe(3);
      const dropped = await inbox(bobPhone, 0, 1000, at(6));
      expect(dropped.items).toEqual([]);
      expect(dropped.lastPosition).toBe(3); // positions only grow: cursors stay valid
      expect(seqsIn((await inbox(bobLaptop, 0, 1000, at(6))).items)).toEqual([2]);
      // Idempotent, and an older removal never moves the mark back.
      expect(await store.dropDevice({ device: bobPhone, removedAt: at(5) })).toBe(0);
      await store.dropDevice({ device: bobPhone, removedAt: at(0) });

      // Accepted before the removal, stored after it (a late delivery): no item, no target for it.
      const late = await store.storeMessage(
        input({ conversationId: c, sender: alice, to: [bobPhone, bobLaptop], acceptedAt: 4 }),
        (a) => [assignedEvent(a)],
      );
      expect(late).toEqual({ outcome: "stored", seq: 3 });
      const stored = (await pending("test.stored")).at(-1);
      expect(stored?.targets).toEqual([["bob", "laptop", 3, null]]);
      expect((await inbox(bobPhone, 0, 1000, at(6))).items).toEqual([]);
      // Receipts skip it too.
      await mark(bobLaptop, c, "read", { upToSeq: 3 }, 7);
      expect((await inbox(bobPhone, 0, 1000, at(8))).items).toEqual([]);

      // Registered anew: messages accepted after the removal reach it, and so do receipts.
      await put({ conversationId: c, sender: alice, to: [bobPhone, bobLaptop], acceptedAt: 9 });
      await mark(bobLaptop, c, "read", { upToSeq: 4 }, 10);
      expect(seqsIn((await inbox(bobPhone, 3, 1000, at(11))).items)).toEqual([4, "r4"]);
      // A late removal event of the earlier registration leaves the new one's inbox alone.
      expect(await store.dropDevice({ device: bobPhone, removedAt: at(5) })).toBe(1);
      expect(seqsIn((await inbox(bobPhone, 3, 1000, at(11))).items)).toEqual([4]);
    });

    it("reports receipts per message and finds messages addressed to a device", async () => {
      const c = conversation();
      const messageId = uuidv7();
      await put({
        conversationId: c,
        sender: dev("alice"),
        to: [dev("bob"), dev("carol"), dev("alice", "laptop")],
        messageId,
      });
      await mark(dev("bob"), c, "read", { messageIds: [messageId] }, 30);
      await mark(dev("carol"), c, "delivered", { upToSeq: 1 }, 40);
      const found = await store.messageReceipts({ conversationId: c, messageId, now: at(50) });
      expect(found?.message).toMatchObject({ messageId, seq: 1, sender: dev("alice") });
      expect(found?.recipients).toEqual([
        { userId: "bob", deliveredAt: at(30), readAt: at(30) },
        { userId: "carol", deliveredAt: at(40), readAt: undefined },
      ]);
      expect(
        await store.messageReceipts({ conversationId: conversation(), messageId, now: at(50) }),
      ).toBeUndefined();
      expect(
        await store.messageReceipts({ conversationId: c, messageId: uuidv7(), now: at(50) }),
      ).toBeUndefined();

      const find = (device: DeviceRef, conversationId = c) =>
        store.findMessageForDevice({ conversationId, messageId, device, now: at(50) });
      expect((await find(dev("bob")))?.addressed).toBe(true);
      expect((await find(dev("alice", "laptop")))?.addressed).toBe(true);
      expect((await find(dev("bob", "tablet")))?.addressed).toBe(false);
      expect((await find(dev("alice")))?.addressed).toBe(false);
      expect(await find(dev("bob"), conversation())).toBeUndefined();
    });

    it("hides what expired, sweeps it, and never reuses a seq", async () => {
      const c = conversation();
      const bob = dev("bob");
      const early = uuidv7();
      const late = uuidv7();
      await put({ conversationId: c, sender: dev("alice"), to: [bob], messageId: early, expiresAt: 100 });
      await put({ conversationId: c, sender: dev("alice"), to: [bob], messageId: late, expiresAt: 10 * DAY });
      const now = at(200);
      expect(seqsIn((await inbox(bob, 0, 100, now)).items)).toEqual([2]);
      const listed = await store.listMessages({
        conversationId: c,
        device: bob,
        afterSeq: 0,
        beforeSeq: 0,
        order: "oldest_first",
        limit: 10,
        now,
      });
      expect([listed.messages.map((m) => m.seq), listed.lastSeq]).toEqual([[2], 2]);
      expect(await store.messageReceipts({ conversationId: c, messageId: early, now })).toBeUndefined();
      expect(
        await store.findMessageForDevice({ conversationId: c, messageId: early, device: bob, now }),
      ).toBeUndefined();
      // The expired, unacknowledged message does not hold bob's watermark back.
      const receipt = await mark(bob, c, "delivered", { messageIds: [late] }, 200);
      expect(receipt.state.deliveredUpToSeq).toBe(2);
      // Receipt items expire too.
      expect(seqsIn((await inbox(dev("alice"), 0, 100, at(201))).items)).toEqual(["r2"]);
      expect(seqsIn((await inbox(dev("alice"), 0, 100, at(200 + 30 * DAY))).items)).toEqual([]);

      const removed = await store.sweepExpired(now);
      expect(removed).toBeGreaterThanOrEqual(0);
      expect(seqsIn((await inbox(bob, 0, 100, now)).items)).toEqual([]);
      expect((await store.lastSeqs([c])).get(c)).toBe(2);
      expect((await put({ conversationId: c, sender: dev("alice"), to: [bob], acceptedAt: 300 })).seq).toBe(
        3,
      );
      expect((await inbox(bob, 0, 100, now)).items.map((i) => i.position)).toEqual([3]);
    });

    it("keeps messages, inboxes, receipt state, counters and pending events across reopening", async () => {
      const c = conversation();
      const bob = dev("bob");
      await put({ conversationId: c, sender: dev("alice"), to: [bob] });
      await put({ conversationId: c, sender: dev("alice"), to: [bob] });
      await mark(bob, c, "read", { upToSeq: 1 });
      store = await fixture.reopen();
      expect(seqsIn((await inbox(bob)).items)).toEqual([2]);
      expect((await store.receiptStates(c, ["bob"])).get("bob")?.readUpToSeq).toBe(1);
      expect((await pending("test.stored")).map((e) => e.seq)).toEqual([1, 2]);
      expect((await pending("test.receipts")).length).toBe(1);
      expect(await put({ conversationId: c, sender: dev("alice"), to: [bob] })).toEqual({
        outcome: "stored",
        seq: 3,
      });
      expect((await inbox(bob)).items.map((i) => i.position)).toEqual([2, 3]);
    });

    it("appends events on their own and forgets them once published", async () => {
      await store.appendEvents([{ topic: "test.other", key: "k", payload: bytes(1) }]);
      const records = await store.outbox.pending(10);
      expect(records.map((r) => [r.topic, r.key, [...r.payload]])).toEqual([["test.other", "k", [1]]]);
      await store.outbox.markPublished(records.map((r) => r.id));
      expect(await store.outbox.pending(10)).toEqual([]);
    });
  });
}
