import { fromBinary } from "@bufbuild/protobuf";
import { v7 as uuidv7 } from "uuid";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  MessageStoredSchema,
  ResendRequestedSchema,
} from "../../../gen/parley/events/v1/message_events_pb.ts";
import { ReceiptRecordedSchema } from "../../../gen/parley/events/v1/receipt_events_pb.ts";
import { ParleyError } from "../../../lib/errors.ts";
import { createMemoryRateLimiter } from "../../../lib/rate-limit.ts";
import { ConversationView } from "../../../lib/views/conversation-view.ts";
import { createSqliteHistoryStore } from "../adapters/sqlite/sqlite-history-store.ts";
import { decodeCursor } from "./cursor.ts";
import type { AcceptedMessage, History } from "./history.ts";
import { createHistory, DEFAULT_RETENTION_MS } from "./history.ts";
import type { HistoryStore } from "./history-store.ts";
import type { DeviceRef } from "./model.ts";

const T0 = new Date("2030-01-01T00:00:00.000Z");
const DAY_MS = 86_400_000;
const dev = (userId: string, deviceId = "phone"): DeviceRef => ({ userId, deviceId });

async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return err instanceof ParleyError ? `${err.code}/${err.reason}` : `unexpected: ${String(err)}`;
  }
  return "no error";
}

describe("history use cases", () => {
  let store: HistoryStore;
  let view: ConversationView;
  let history: History;
  let clock: Date;
  let changes: number;
  const group = uuidv7();

  beforeEach(() => {
    store = createSqliteHistoryStore({ path: ":memory:" });
    view = new ConversationView();
    view.applyMembership({
      conversationId: group,
      kind: "group",
      version: 1n,
      memberUserIds: ["alice", "bob", "carol"],
      deleted: false,
    });
    clock = new Date(T0.getTime() + 1000);
    changes = 0;
    history = createHistory({
      store,
      conversations: view,
      resendLimiter: createMemoryRateLimiter({ burst: 2, perSecond: 1 }, { now: () => clock.getTime() }),
      now: () => clock,
      onChange: () => {
        changes++;
      },
    });
  });
  afterEach(() => store.close());

  const accepted = (overrides: Partial<AcceptedMessage> = {}): AcceptedMessage => ({
    messageId: uuidv7(),
    conversationId: group,
    sender: dev("alice"),
    clientMessageId: uuidv7(),
    kind: 1,
    payload: { case: "shared", ciphertext: new Uint8Array([7, 7]) },
    acceptedAt: T0,
    recipientDevices: [dev("bob"), dev("bob", "laptop"), dev("carol"), dev("alice", "laptop")],
    membershipVersion: 1n,
    traceparent: "",
    forceTrace: false,
    ...overrides,
  });
  const outbox = async (topic: string) =>
    (await store.outbox.pending(10_000)).filter((e) => e.topic === topic);

  it("ingests a pairwise message: each target its ciphertext, the sending device left out, cursors as Sync gives them", async () => {
    const message = accepted({
      payload: {
        case: "perDevice",
        recipients: [
          { userId: "bob", devices: [{ deviceId: "phone", ciphertext: new Uint8Array([1]) }] },
          { userId: "carol", devices: [{ deviceId: "phone", ciphertext: new Uint8Array([2]) }] },
        ],
      },
      recipientDevices: [dev("bob"), dev("carol"), dev("alice"), dev("bob")],
    });
    expect(await history.ingest(message)).toEqual({ outcome: "stored", seq: 1 });
    expect(changes).toBe(1);
    const [event] = await outbox("chat.deliveries");
    const stored = fromBinary(MessageStoredSchema, event?.payload ?? new Uint8Array());
    expect(stored.message).toMatchObject({ messageId: message.messageId, seq: 1n, sharedPayload: false });
    expect(stored.message?.ciphertext).toEqual(new Uint8Array());
    expect(stored.targets.map((t) => [t.device?.userId, t.device?.deviceId, [...t.ciphertext]])).toEqual([
      ["bob", "phone", [1]],
      ["carol", "phone", [2]],
    ]);
    const sync = await history.sync({ device: dev("bob"), cursor: new Uint8Array(), pageSize: 0 });
    expect(sync.items[0]?.cursor).toEqual(stored.targets[0]?.cursor);
    expect(sync.items[0]?.kind === "message" ? [...sync.items[0].message.ciphertext] : []).toEqual([1]);
    // A redelivery changes nothing and publishes nothing more.
    expect(await history.ingest(message)).toMatchObject({ outcome: "duplicate", seq: 1 });
    expect(await outbox("chat.deliveries")).toHaveLength(1);
    expect(changes).toBe(1);
  });

  it("syncs in pages: items after the cursor, `more`, the cursor echoed on an empty page, watermarks", async () => {
    const other = uuidv7();
    view.applyMembership({
      conversationId: other,
      kind: "direct",
      version: 1n,
      memberUserIds: ["bob", "dave"],
      deleted: false,
    });
    for (let i = 0; i < 3; i++) await history.ingest(accepted());
    await history.ingest(
      accepted({ conversationId: other, sender: dev("dave"), recipientDevices: [dev("bob")] }),
    );
    const bob = dev("bob");
    const first = await history.sync({ device: bob, cursor: new Uint8Array(), pageSize: 3 });
    expect(first.items.map((i) => (i.kind === "message" ? i.message.seq : 0))).toEqual([1, 2, 3]);
    expect(first.more).toBe(true);
    expect(first.nextCursor).toEqual(first.items[2]?.cursor);
    expect(first.watermarks).toEqual([{ conversationId: group, lastSeq: 3 }]);
    const second = await history.sync({ device: bob, cursor: first.nextCursor, pageSize: 3 });
    expect(second.items.map((i) => (i.kind === "message" ? i.message.conversationId : ""))).toEqual([other]);
    expect([second.more, second.watermarks]).toEqual([false, [{ conversationId: other, lastSeq: 1 }]]);
    const empty = await history.sync({ device: bob, cursor: second.nextCursor, pageSize: 3 });
    expect([empty.items, empty.more, empty.nextCursor, empty.watermarks]).toEqual([
      [],
      false,
      second.nextCursor,
      [],
    ]);
    // Another device's cursor, or one beyond what the device was ever given, is refused.
    expect(
      await failure(history.sync({ device: dev("bob", "laptop"), cursor: first.nextCursor, pageSize: 0 })),
    ).toBe("invalid_argument/INVALID_CURSOR");
    const beyond = first.nextCursor.slice();
    beyond[16] = 200;
    expect(await failure(history.sync({ device: bob, cursor: beyond, pageSize: 0 }))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
  });

  it("answers an empty inbox with the position of its end, from which later messages are found", async () => {
    const fresh = dev("carol", "tablet");
    const empty = await history.sync({ device: fresh, cursor: new Uint8Array(), pageSize: 0 });
    expect(empty.items).toEqual([]);
    expect(empty.nextCursor.length).toBeGreaterThan(0);
    const later = accepted({ recipientDevices: [fresh] });
    await history.ingest(later);
    const next = await history.sync({ device: fresh, cursor: empty.nextCursor, pageSize: 0 });
    expect(next.items.map((i) => (i.kind === "message" ? i.message.messageId : ""))).toEqual([
      later.messageId,
    ]);
  });

  it("resumes from the oldest unacknowledged message when asked, even if the cursor lies past it", async () => {
    const other = uuidv7();
    view.applyMembership({
      conversationId: other,
      kind: "direct",
      version: 1n,
      memberUserIds: ["bob", "dave"],
      deleted: false,
    });
    const bob = dev("bob");
    const missed = accepted({ recipientDevices: [bob] });
    await history.ingest(missed);
    const seen = accepted({ conversationId: other, sender: dev("dave"), recipientDevices: [bob] });
    await history.ingest(seen);
    // The device got (and acked) the second push but never the first; its cursor is past both.
    const page = await history.sync({ device: bob, cursor: new Uint8Array(), pageSize: 0 });
    const cursorPastBoth = page.nextCursor;
    await history.markDelivered({
      device: bob,
      conversationId: other,
      target: { upToSeq: 1 },
      at: undefined,
      traceparent: "",
    });
    const plain = await history.sync({ device: bob, cursor: cursorPastBoth, pageSize: 0 });
    expect(plain.items).toEqual([]);
    const resumed = await history.sync({
      device: bob,
      cursor: cursorPastBoth,
      pageSize: 0,
      fromOldestUnacknowledged: true,
    });
    expect(resumed.items.map((i) => (i.kind === "message" ? i.message.messageId : "receipt"))).toEqual([
      missed.messageId,
    ]);
    // Once acknowledged, nothing comes back.
    await history.markDelivered({
      device: bob,
      conversationId: group,
      target: { upToSeq: 1 },
      at: undefined,
      traceparent: "",
    });
    const after = await history.sync({
      device: bob,
      cursor: cursorPastBoth,
      pageSize: 0,
      fromOldestUnacknowledged: true,
    });
    expect(after.items.filter((i) => i.kind === "message")).toEqual([]);
  });

  it("caps a Sync page at about 2 MiB whatever the page size", async () => {
    for (let i = 0; i < 600; i++) {
      await history.ingest(accepted({ payload: { case: "shared", ciphertext: new Uint8Array(4096) } }));
    }
    const page = await history.sync({ device: dev("bob"), cursor: new Uint8Array(), pageSize: 1000 });
    expect(page.items.length).toBeLessThan(600);
    expect(page.items.length).toBeGreaterThan(400);
    expect(page.more).toBe(true);
    const rest = await history.sync({ device: dev("bob"), cursor: page.nextCursor, pageSize: 1000 });
    expect(page.items.length + rest.items.length).toBe(600);
    expect(rest.more).toBe(false);
  });

  it("lists messages member-only, in pages, newest or oldest first, with tokens bound to the request", async () => {
    for (let i = 0; i < 5; i++) await history.ingest(accepted());
    const list = (
      pageToken: string,
      order: "newest_first" | "oldest_first" = "newest_first",
      device = dev("bob"),
    ) =>
      history.listMessages({
        device,
        conversationId: group,
        afterSeq: 0,
        beforeSeq: 0,
        order,
        pageSize: 2,
        pageToken,
      });
    const seen: number[] = [];
    let token = "";
    do {
      const page = await list(token);
      expect(page.lastSeq).toBe(5);
      seen.push(...page.messages.map((m) => m.seq));
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen).toEqual([5, 4, 3, 2, 1]);
    const oldest = await list("", "oldest_first");
    expect(oldest.messages.map((m) => m.seq)).toEqual([1, 2]);
    expect((await list(oldest.nextPageToken, "oldest_first")).messages.map((m) => m.seq)).toEqual([3, 4]);
    expect(await failure(list(oldest.nextPageToken, "newest_first"))).toBe(
      "invalid_argument/INVALID_PAGE_TOKEN",
    );
    expect(await failure(list(oldest.nextPageToken, "oldest_first", dev("bob", "laptop")))).toBe(
      "invalid_argument/INVALID_PAGE_TOKEN",
    );
    // Not a member, an unknown conversation, a deleted one: the same NOT_FOUND.
    expect(await failure(list("", "oldest_first", dev("mallory")))).toBe("not_found/CONVERSATION_NOT_FOUND");
    expect(
      await failure(
        history.listMessages({
          device: dev("bob"),
          conversationId: uuidv7(),
          afterSeq: 0,
          beforeSeq: 0,
          order: "newest_first",
          pageSize: 0,
          pageToken: "",
        }),
      ),
    ).toBe("not_found/CONVERSATION_NOT_FOUND");
    view.applyMembership({
      conversationId: group,
      kind: "group",
      version: 2n,
      memberUserIds: [],
      deleted: true,
    });
    expect(await failure(list(""))).toBe("not_found/CONVERSATION_NOT_FOUND");
  });

  it("records receipts: ReceiptRecorded to the senders (and the reader, for read), a future time clamped, idempotent", async () => {
    const first = accepted();
    await history.ingest(first);
    await history.ingest(accepted({ sender: dev("carol"), recipientDevices: [dev("bob"), dev("alice")] }));
    const future = new Date(clock.getTime() + DAY_MS);
    const read = await history.markRead({
      device: dev("bob"),
      conversationId: group,
      target: { upToSeq: 2 },
      at: future,
      traceparent: "",
    });
    expect(read).toEqual({ recorded: true, state: { deliveredUpToSeq: 2, readUpToSeq: 2 } });
    const [event] = await outbox("chat.receipts");
    const recorded = fromBinary(ReceiptRecordedSchema, event?.payload ?? new Uint8Array());
    expect(recorded.notifyUserIds).toEqual(["alice", "bob", "carol"]);
    expect(recorded.receipt).toMatchObject({ conversationId: group, upToSeq: 2n, kind: 2, messageIds: [] });
    expect(recorded.receipt?.at?.seconds).toBe(BigInt(clock.getTime() / 1000));
    // Keyed by conversation and reader user, so one reader's receipts stay in order.
    expect(event?.key).toBe(`${group}/bob`);
    const again = await history.markDelivered({
      device: dev("bob", "laptop"),
      conversationId: group,
      target: { messageIds: [first.messageId] },
      at: undefined,
      traceparent: "",
    });
    expect(again).toEqual({ recorded: false, state: { deliveredUpToSeq: 2, readUpToSeq: 2 } });
    expect(await outbox("chat.receipts")).toHaveLength(1);
    expect(
      await failure(
        history.markRead({
          device: dev("mallory"),
          conversationId: group,
          target: { upToSeq: 1 },
          at: undefined,
          traceparent: "",
        }),
      ),
    ).toBe("not_found/CONVERSATION_NOT_FOUND");
  });

  it("reports receipts per conversation and per message, paginated by user id", async () => {
    const message = accepted();
    await history.ingest(message);
    await history.markRead({
      device: dev("bob"),
      conversationId: group,
      target: { upToSeq: 1 },
      at: undefined,
      traceparent: "",
    });
    const byConversation = await history.getReceipts({
      device: dev("carol"),
      conversationId: group,
      messageId: "",
      pageSize: 2,
      pageToken: "",
    });
    expect(byConversation.members.map((m) => [m.userId, m.state.readUpToSeq, m.readAt])).toEqual([
      ["alice", 0, undefined],
      ["bob", 1, clock],
    ]);
    const rest = await history.getReceipts({
      device: dev("carol"),
      conversationId: group,
      messageId: "",
      pageSize: 2,
      pageToken: byConversation.nextPageToken,
    });
    expect([rest.members.map((m) => m.userId), rest.nextPageToken]).toEqual([["carol"], ""]);

    const byMessage = await history.getReceipts({
      device: dev("alice"),
      conversationId: group,
      messageId: message.messageId,
      pageSize: 0,
      pageToken: "",
    });
    expect(byMessage.members.map((m) => [m.userId, m.deliveredAt, m.readAt])).toEqual([
      ["bob", clock, clock],
      ["carol", undefined, undefined],
    ]);
    expect([
      byMessage.messageSeq,
      byMessage.recipientCount,
      byMessage.deliveredCount,
      byMessage.readCount,
    ]).toEqual([1, 2, 1, 1]);
    expect(
      await failure(
        history.getReceipts({
          device: dev("alice"),
          conversationId: group,
          messageId: uuidv7(),
          pageSize: 0,
          pageToken: "",
        }),
      ),
    ).toBe("not_found/MESSAGE_NOT_FOUND");
    expect(
      await failure(
        history.getReceipts({
          device: dev("alice"),
          conversationId: group,
          messageId: message.messageId,
          pageSize: 0,
          pageToken: byConversation.nextPageToken,
        }),
      ),
    ).toBe("invalid_argument/INVALID_PAGE_TOKEN");
  });

  it("publishes a resend request only for a retained message addressed to the device, rate limited", async () => {
    const message = accepted();
    await history.ingest(message);
    const identityKey = new Uint8Array(33).fill(5);
    const request = (device: DeviceRef, messageId = message.messageId) =>
      history.requestResend({ device, conversationId: group, messageId, identityKey, traceparent: "" });
    await request(dev("bob"));
    const [event] = await outbox("chat.resends");
    const resend = fromBinary(ResendRequestedSchema, event?.payload ?? new Uint8Array());
    expect(resend).toMatchObject({
      conversationId: group,
      messageId: message.messageId,
      requester: { userId: "bob", deviceId: "phone" },
      sender: { userId: "alice", deviceId: "phone" },
      identityKey,
    });
    expect(await failure(request(dev("bob", "tablet")))).toBe("not_found/MESSAGE_NOT_FOUND");
    expect(await failure(request(dev("bob"), uuidv7()))).toBe("not_found/MESSAGE_NOT_FOUND");
    // The third request in a second from one device is over its burst of 2.
    expect(await failure(request(dev("bob")))).toBe("resource_exhausted/RATE_LIMITED");
    clock = new Date(clock.getTime() + 5000);
    expect(await failure(request(dev("carol"), uuidv7()))).toBe("not_found/MESSAGE_NOT_FOUND");
    expect(await failure(request(dev("mallory")))).toBe("not_found/CONVERSATION_NOT_FOUND");
    clock = new Date(T0.getTime() + DEFAULT_RETENTION_MS + 1);
    expect(await failure(request(dev("carol")))).toBe("not_found/MESSAGE_NOT_FOUND");
    expect(await outbox("chat.resends")).toHaveLength(1);
  });

  it("keeps messages for the retention period after accepted_at, then hides them; cursors past them stay valid", async () => {
    await history.ingest(accepted());
    const page = await history.sync({ device: dev("bob"), cursor: new Uint8Array(), pageSize: 0 });
    expect(decodeCursor(dev("bob"), page.nextCursor)).toBe(1);
    clock = new Date(T0.getTime() + DEFAULT_RETENTION_MS);
    expect((await history.sync({ device: dev("bob"), cursor: new Uint8Array(), pageSize: 0 })).items).toEqual(
      [],
    );
    expect((await history.sync({ device: dev("bob"), cursor: page.nextCursor, pageSize: 0 })).items).toEqual(
      [],
    );
    await history.ingest(accepted({ acceptedAt: clock }));
    const list = await history.listMessages({
      device: dev("bob"),
      conversationId: group,
      afterSeq: 0,
      beforeSeq: 0,
      order: "oldest_first",
      pageSize: 0,
      pageToken: "",
    });
    expect([list.messages.map((m) => m.seq), list.lastSeq]).toEqual([[2], 2]);
  });

  it("a reader the view does not know yet (just added) is served once the view reaches the connection service's version", async () => {
    const asked: string[] = [];
    const catchingUp = createHistory({
      store,
      conversations: view,
      membership: {
        async membershipVersion(userId, conversationId) {
          asked.push(userId);
          return userId === "dave" && conversationId === group ? 2n : undefined;
        },
      },
      resendLimiter: createMemoryRateLimiter({ burst: 2, perSecond: 1 }),
      now: () => clock,
    });
    const read = (userId: string) =>
      catchingUp.listMessages({
        device: dev(userId),
        conversationId: group,
        afterSeq: 0,
        beforeSeq: 0,
        order: "oldest_first",
        pageSize: 10,
        pageToken: "",
      });
    const reading = read("dave");
    // MembershipChanged (dave added, version 2) reaches the view while the read waits.
    setTimeout(
      () =>
        view.applyMembership({
          conversationId: group,
          kind: "group",
          version: 2n,
          memberUserIds: ["alice", "bob", "carol", "dave"],
          deleted: false,
        }),
      20,
    );
    await expect(reading).resolves.toMatchObject({ messages: [] });
    expect(await failure(read("mallory"))).toBe("not_found/CONVERSATION_NOT_FOUND");
    // A member the view knows is never asked about.
    await read("alice");
    expect(asked).toEqual(["dave", "mallory"]);
  });
});
