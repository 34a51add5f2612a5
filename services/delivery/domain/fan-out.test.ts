import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ReceiptKind } from "../../../gen/parley/common/v1/message_pb.ts";
import {
  ConnectionState,
  ContactChangedSchema,
  ConversationKind,
  GroupRenamedSchema,
  MemberChangeKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../../gen/parley/events/v1/connection_events_pb.ts";
import {
  KeyChangedSchema,
  KeyChangeKind,
  PrekeysLowSchema,
} from "../../../gen/parley/events/v1/key_events_pb.ts";
import type { MessageStored } from "../../../gen/parley/events/v1/message_events_pb.ts";
import {
  MessageStoredSchema,
  ResendRequestedSchema,
} from "../../../gen/parley/events/v1/message_events_pb.ts";
import {
  PresenceChangedSchema,
  PresenceState,
  TypingChangedSchema,
} from "../../../gen/parley/events/v1/presence_events_pb.ts";
import { ReceiptRecordedSchema } from "../../../gen/parley/events/v1/receipt_events_pb.ts";
import type { ConversationView } from "../../../lib/views/conversation-view.ts";
import type { DispatchSummary } from "./dispatch.ts";
import { createDispatcher } from "./dispatch.ts";
import type { FanOut, FanOutResult } from "./fan-out.ts";
import { createFanOut } from "./fan-out.ts";
import { noMetrics, PushCallError } from "./ports.ts";
import type { RoutedWorld } from "./test-fixtures.ts";
import {
  conversationWorld,
  ids,
  pushEverything,
  pushedTo,
  routedWorld,
  settle,
  silentLogger,
  testDispatcher,
} from "./test-fixtures.ts";

const messageId = "0190e8f4-1c7b-7000-8000-00000000abcd";
const bytes = (...values: number[]) => new Uint8Array(values);

/** By default sent from bob/laptop, which is offline: no echo of the message to its sending device. */
function stored(
  targets: Array<[user: string, device: string]>,
  shared = false,
  part = 0,
  sender: [user: string, device: string] = ["bob", "laptop"],
): MessageStored {
  return create(MessageStoredSchema, {
    message: {
      messageId,
      conversationId: ids.group,
      seq: 7n,
      sender: { userId: sender[0], deviceId: sender[1] },
      sharedPayload: shared,
      ciphertext: shared ? bytes(9, 9, 9) : new Uint8Array(0),
    },
    targets: targets.map(([userId, deviceId], i) => ({
      device: { userId, deviceId },
      ciphertext: shared ? new Uint8Array(0) : bytes(i + 1),
      cursor: bytes(100 + i),
    })),
    storedAt: timestampFromMs(1_000),
    part,
    partCount: part + 1,
  });
}

function summary(result: FanOutResult): DispatchSummary {
  if ("dropped" in result) throw new Error(`dropped: ${result.dropped}`);
  return result;
}

let world: RoutedWorld;
let view: ConversationView;
let harness: ReturnType<typeof testDispatcher>;
let fanOut: FanOut;

beforeEach(async () => {
  world = await routedWorld();
  view = conversationWorld();
  harness = testDispatcher(world);
  fanOut = createFanOut({
    conversations: view,
    routes: world.routes,
    dispatcher: harness.dispatcher,
    logger: silentLogger,
  });
});

afterEach(async () => {
  await world.close();
});

describe("messages (MessageStored)", () => {
  it("groups target devices by host, one batch per host, each device with its own ciphertext and cursor", async () => {
    const result = summary(
      await fanOut.messageStored(
        stored([
          ["alice", "phone"],
          ["alice", "laptop"],
          ["bob", "phone"],
          ["carol", "tablet"],
        ]),
      ),
    );
    expect(result).toMatchObject({ addressed: 4, batches: 2, pushed: 4, offline: 0 });
    expect(harness.pusher.calls.map((c) => c.host.hostId).sort()).toEqual(["h1", "h2"]);
    expect(pushedTo(harness.pusher.calls)).toEqual({
      h1: ["alice/phone", "bob/phone"],
      h2: ["alice/laptop", "carol/tablet"],
    });
    for (const { host, batch } of harness.pusher.calls) {
      expect(batch.hostId).toBe(host.hostId);
      expect(host.pushAddress).toBe(`${host.hostId}.internal:7000`);
      expect(batch.batchId).toBe(`m:${messageId}:0@${host.hostId}#0`);
      // The routes carry the revisions the registry assigned: the push's fencing tokens.
      for (const route of batch.routes) {
        expect(route.revision).toBe(world.revisions.get(`${route.device.userId}/${route.device.deviceId}`));
      }
      for (const item of batch.items) {
        expect(item.devices).toHaveLength(1);
        expect(item.payload.case).toBe("message");
      }
    }
    const h1 = harness.pusher.calls.find((c) => c.host.hostId === "h1")?.batch;
    const [first, second] = h1?.items ?? [];
    expect(first?.payload.value).toMatchObject({ messageId, seq: 7n, ciphertext: bytes(1) });
    expect(first?.cursor).toEqual(bytes(100));
    expect(second?.payload.value).toMatchObject({ ciphertext: bytes(3) });
    expect(second?.cursor).toEqual(bytes(102));
  });

  it("keeps the shared ciphertext of a group-key message for every device", async () => {
    await fanOut.messageStored(
      stored(
        [
          ["bob", "phone"],
          ["carol", "tablet"],
        ],
        true,
      ),
    );
    const values = harness.pusher.calls.flatMap((c) => c.batch.items.map((i) => i.payload.value));
    expect(values).toHaveLength(2);
    for (const value of values)
      expect(value).toMatchObject({ sharedPayload: true, ciphertext: bytes(9, 9, 9) });
  });

  it("echoes the message without ciphertext or cursor to its connected sending device, once per message", async () => {
    for (const shared of [false, true]) {
      // A fresh dispatcher each time: the same message id would hit the first one's checkpoints.
      const fresh = testDispatcher(world);
      const echoing = createFanOut({
        conversations: view,
        routes: world.routes,
        dispatcher: fresh.dispatcher,
        logger: silentLogger,
      });
      const result = summary(
        await echoing.messageStored(stored([["bob", "phone"]], shared, 0, ["dave", "phone"])),
      );
      expect(result).toMatchObject({ addressed: 2, pushed: 2, offline: 0 });
      expect(pushedTo(fresh.pusher.calls)).toEqual({ h1: ["bob/phone"], h2: ["dave/phone"] });
      const echo = fresh.pusher.calls.find((c) => c.host.hostId === "h2")?.batch.items[0];
      expect(echo?.payload.value).toMatchObject({
        messageId,
        seq: 7n,
        sender: { userId: "dave", deviceId: "phone" },
        ciphertext: new Uint8Array(0),
        sharedPayload: false,
      });
      expect(echo?.cursor ?? new Uint8Array(0)).toEqual(new Uint8Array(0));
    }
    // A later part of a split message echoes nothing again; an offline sender gets no echo.
    await fanOut.messageStored(stored([["bob", "phone"]], false, 1, ["dave", "phone"]));
    await fanOut.messageStored(stored([["alice", "phone"]], false, 0, ["erin", "phone"]));
    expect(pushedTo(harness.pusher.calls)).toEqual({ h1: ["bob/phone", "alice/phone"] });
  });

  it("skips offline devices without calling anyone for them", async () => {
    const result = summary(
      await fanOut.messageStored(
        stored([
          ["bob", "laptop"],
          ["erin", "phone"],
          ["bob", "phone"],
        ]),
      ),
    );
    expect(result).toMatchObject({ addressed: 3, offline: 2, pushed: 1, batches: 1 });
    expect(pushedTo(harness.pusher.calls)).toEqual({ h1: ["bob/phone"] });
    expect(harness.counts.pushes.get("offline")).toBe(2);
  });

  it("a device whose host left the registry is offline too", async () => {
    await world.leases.h2?.revoke();
    await settle();
    const result = summary(
      await fanOut.messageStored(
        stored([
          ["bob", "phone"],
          ["carol", "tablet"],
        ]),
      ),
    );
    expect(result).toMatchObject({ offline: 1, pushed: 1 });
    expect(pushedTo(harness.pusher.calls)).toEqual({ h1: ["bob/phone"] });
  });

  it("resends nothing already pushed when the same event is delivered again; a new part is new", async () => {
    const event = stored([
      ["alice", "phone"],
      ["carol", "tablet"],
    ]);
    await fanOut.messageStored(event);
    expect(harness.pusher.calls).toHaveLength(2);

    const again = summary(await fanOut.messageStored(event));
    expect(harness.pusher.calls).toHaveLength(2);
    expect(again).toMatchObject({ batches: 0, pushed: 0, alreadyPushed: 2 });
    expect(harness.counts.checkpointHits).toBe(2);

    // Another part of the same message is another event.
    await fanOut.messageStored(stored([["bob", "phone"]], false, 1));
    expect(harness.pusher.calls).toHaveLength(3);
  });

  it("after a redelivery, pushes only the batches whose host had not answered", async () => {
    // h2 is down during the first delivery, and the worker gives up on it.
    harness.pusher.answer = (host, batch) =>
      host.hostId === "h2" ? new PushCallError("down", true, "UNAVAILABLE") : pushEverything(host, batch);
    const event = stored([
      ["bob", "phone"],
      ["carol", "tablet"],
    ]);
    expect(summary(await fanOut.messageStored(event))).toMatchObject({ pushed: 1, failed: 1 });

    // Another worker gets the event again (same checkpoint store, as Redis is shared).
    harness.pusher.calls.length = 0;
    harness.pusher.answer = pushEverything;
    const otherWorker = createFanOut({
      conversations: view,
      routes: world.routes,
      dispatcher: createDispatcher({
        routes: world.routes,
        pusher: harness.pusher,
        checkpoints: harness.checkpoints,
        metrics: noMetrics,
        logger: silentLogger,
      }),
      logger: silentLogger,
    });
    expect(summary(await otherWorker.messageStored(event))).toMatchObject({ pushed: 1, alreadyPushed: 1 });
    expect(pushedTo(harness.pusher.calls)).toEqual({ h2: ["carol/tablet"] });
  });

  it("control: without checkpoints a redelivery pushes everything again", async () => {
    const noCheckpoints = testDispatcher(world, {
      checkpoints: { has: async () => false, record: async () => {} },
    });
    const bare = createFanOut({
      conversations: view,
      routes: world.routes,
      dispatcher: noCheckpoints.dispatcher,
      logger: silentLogger,
    });
    const event = stored([["bob", "phone"]]);
    await bare.messageStored(event);
    await bare.messageStored(event);
    expect(pushedTo(noCheckpoints.pusher.calls)).toEqual({ h1: ["bob/phone", "bob/phone"] });
  });
});

describe("receipts, keys, prekeys, contacts, memberships, renames, resends", () => {
  it("pushes a receipt to every connected device of the named users except the reader device", async () => {
    await fanOut.receiptRecorded(
      create(ReceiptRecordedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000101",
        receipt: {
          conversationId: ids.group,
          reader: { userId: "alice", deviceId: "phone" },
          kind: ReceiptKind.READ,
          upToSeq: 7n,
        },
        notifyUserIds: ["dave", "alice"],
        recordedAt: timestampFromMs(1),
      }),
    );
    const pushed = pushedTo(harness.pusher.calls);
    expect(Object.values(pushed).flat().sort()).toEqual(["alice/laptop", "dave/phone"]);
    expect(harness.pusher.calls.every((c) => c.batch.items[0]?.payload.case === "receipt")).toBe(true);
  });

  it("pushes a key change to the owner's other devices, contacts and fellow group members", async () => {
    await fanOut.keyChanged(
      create(KeyChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000102",
        device: { userId: "carol", deviceId: "tablet" },
        kind: KeyChangeKind.IDENTITY_ROTATED,
        keyVersion: 2n,
        effectiveAt: timestampFromMs(1),
      }),
    );
    // carol: contact of alice, in the group with alice, bob and dave; her only device is the
    // changed one, so none of hers.
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "alice/phone",
      "bob/phone",
      "dave/phone",
    ]);

    harness.pusher.calls.length = 0;
    await fanOut.keyChanged(
      create(KeyChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000103",
        device: { userId: "erin", deviceId: "phone" },
        kind: KeyChangeKind.DEVICE_ADDED,
        keyVersion: 1n,
        effectiveAt: timestampFromMs(1),
      }),
    );
    // erin's only contact is dave: nobody else learns about her devices.
    expect(Object.values(pushedTo(harness.pusher.calls)).flat()).toEqual(["dave/phone"]);

    harness.pusher.calls.length = 0;
    await fanOut.keyChanged(
      create(KeyChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000105",
        device: { userId: "alice", deviceId: "laptop" },
        kind: KeyChangeKind.DEVICE_REMOVED,
        keyVersion: 2n,
        effectiveAt: timestampFromMs(1),
      }),
    );
    // A removal reaches the removed device too (its edge revokes its stream).
    expect(Object.values(pushedTo(harness.pusher.calls)).flat()).toContain("alice/laptop");
    expect(Object.values(pushedTo(harness.pusher.calls)).flat()).toContain("alice/phone");
  });

  it("pushes prekeys-low to that device only", async () => {
    await fanOut.prekeysLow(
      create(PrekeysLowSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000104",
        device: { userId: "alice", deviceId: "laptop" },
        oneTimePrekeyCount: 3,
        lowWatermark: 10,
        detectedAt: timestampFromMs(1),
      }),
    );
    expect(pushedTo(harness.pusher.calls)).toEqual({ h2: ["alice/laptop"] });
  });

  it("pushes each contact view only to its own user's devices", async () => {
    await fanOut.contactChanged(
      create(ContactChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000105",
        version: 3n,
        changedAt: timestampFromMs(1),
        views: [
          {
            userId: "alice",
            otherUserId: "bob",
            state: ConnectionState.BLOCKED,
            previousState: ConnectionState.ACCEPTED,
            bySelf: true,
          },
          {
            userId: "bob",
            otherUserId: "alice",
            state: ConnectionState.NONE,
            previousState: ConnectionState.ACCEPTED,
          },
        ],
      }),
    );
    const items = harness.pusher.calls.flatMap((c) => c.batch.items);
    for (const item of items) {
      expect(item.payload.case).toBe("contact");
      const view = item.payload.value as { userId: string };
      expect(item.devices.every((d) => d.userId === view.userId)).toBe(true);
    }
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "alice/phone",
      "bob/phone",
    ]);
  });

  it("pushes a membership change to the members after it and the users it removed", async () => {
    await fanOut.membershipChanged(
      create(MembershipChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000106",
        conversationId: ids.group,
        kind: ConversationKind.GROUP,
        version: 2n,
        members: [
          { userId: "alice", role: MemberRole.OWNER },
          { userId: "bob", role: MemberRole.MEMBER },
        ],
        changes: [
          { userId: "carol", kind: MemberChangeKind.REMOVED },
          { userId: "dave", kind: MemberChangeKind.REMOVED },
        ],
        changedAt: timestampFromMs(1),
      }),
    );
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "alice/phone",
      "bob/phone",
      "carol/tablet",
      "dave/phone",
    ]);
  });

  it("pushes a deletion to the last members the view knows", async () => {
    await fanOut.membershipChanged(
      create(MembershipChangedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000107",
        conversationId: ids.aliceCarol,
        kind: ConversationKind.DIRECT,
        version: 2n,
        deleted: true,
        changedAt: timestampFromMs(1),
      }),
    );
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "alice/phone",
      "carol/tablet",
    ]);
  });

  it("pushes a rename to the group's current members", async () => {
    await fanOut.groupRenamed(
      create(GroupRenamedSchema, {
        eventId: "0190e8f4-1c7b-7000-8000-000000000108",
        conversationId: ids.group,
        name: "climbing",
        changedByUserId: "alice",
        changedAt: timestampFromMs(1),
      }),
    );
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "alice/phone",
      "bob/phone",
      "carol/tablet",
      "dave/phone",
    ]);
  });

  it("pushes a resend request to the sending device only, and drops it when the sender blocks the requester", async () => {
    const request = create(ResendRequestedSchema, {
      eventId: "0190e8f4-1c7b-7000-8000-000000000109",
      conversationId: ids.group,
      messageId,
      requester: { userId: "bob", deviceId: "phone" },
      identityKey: new Uint8Array([5, ...new Array(32).fill(1)]),
      sender: { userId: "alice", deviceId: "laptop" },
      requestedAt: timestampFromMs(1),
    });
    await fanOut.resendRequested(request);
    expect(pushedTo(harness.pusher.calls)).toEqual({ h2: ["alice/laptop"] });

    harness.pusher.calls.length = 0;
    view.applyBlock({ blocker: "alice", blocked: "bob", isBlocked: true, version: 1n });
    expect(
      await fanOut.resendRequested({ ...request, eventId: "0190e8f4-1c7b-7000-8000-00000000010a" }),
    ).toEqual({
      dropped: "the sender blocks the requester",
    });
    expect(harness.pusher.calls).toHaveLength(0);
  });
});

describe("presence and typing", () => {
  const presence = (userId: string) =>
    create(PresenceChangedSchema, { userId, state: PresenceState.ONLINE, changedAt: timestampFromMs(5) });

  it("pushes presence only to the user's accepted contacts, not to fellow group members", async () => {
    await fanOut.presenceChanged(presence("alice"));
    // bob and carol are alice's contacts; dave shares only the group.
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "bob/phone",
      "carol/tablet",
    ]);
    expect(harness.pusher.calls.every((c) => c.batch.items[0]?.payload.case === "presence")).toBe(true);
  });

  it("never pushes presence across a block, whichever way it goes", async () => {
    view.applyBlock({ blocker: "carol", blocked: "alice", isBlocked: true, version: 1n });
    await fanOut.presenceChanged(presence("alice"));
    expect(Object.values(pushedTo(harness.pusher.calls)).flat()).toEqual(["bob/phone"]);

    harness.pusher.calls.length = 0;
    view.applyBlock({ blocker: "alice", blocked: "bob", isBlocked: true, version: 1n });
    expect(await fanOut.presenceChanged(presence("alice"))).toEqual({ dropped: "no connected recipient" });
    expect(harness.pusher.calls).toHaveLength(0);
  });

  it("pushes typing to the conversation's other members and the typist's other devices, not its own", async () => {
    const typing = create(TypingChangedSchema, {
      conversationId: ids.group,
      device: { userId: "alice", deviceId: "phone" },
      typing: true,
      changedAt: timestampFromMs(5),
      expiresAt: timestampFromMs(5_005),
    });
    await fanOut.typingChanged(typing);
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "bob/phone",
      "carol/tablet",
      "dave/phone",
    ]);

    harness.pusher.calls.length = 0;
    await fanOut.typingChanged({ ...typing, conversationId: ids.aliceBob });
    // The direct conversation: bob, and alice's laptop; never erin or dave.
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "bob/phone",
    ]);

    harness.pusher.calls.length = 0;
    view.applyBlock({ blocker: "dave", blocked: "alice", isBlocked: true, version: 1n });
    await fanOut.typingChanged(typing);
    expect(Object.values(pushedTo(harness.pusher.calls)).flat().sort()).toEqual([
      "alice/laptop",
      "bob/phone",
      "carol/tablet",
    ]);
  });

  it("drops typing from a user who is not a member", async () => {
    const typing = create(TypingChangedSchema, {
      conversationId: ids.aliceBob,
      device: { userId: "dave", deviceId: "phone" },
      typing: true,
      changedAt: timestampFromMs(5),
    });
    expect(await fanOut.typingChanged(typing)).toEqual({ dropped: "not a member" });
    expect(harness.pusher.calls).toHaveLength(0);
  });
});
