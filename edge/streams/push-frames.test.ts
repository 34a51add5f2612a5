import { create, equals, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { MessageSchema, ReceiptSchema } from "../../gen/parley/common/v1/message_pb.ts";
import { PushItemSchema } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import {
  ContactEventKind,
  ConversationEventKind,
  ServerFrameSchema,
} from "../../gen/parley/edge/v1/frames_pb.ts";
import {
  ConnectionState,
  ContactViewSchema,
  ConversationKind,
  MemberChangeKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import {
  contactEvent,
  conversationEvents,
  framesForDevice,
  messageFrame,
  receiptFrame,
} from "./push-frames.ts";

const group = "0190e8f4-1c7b-7000-8000-000000000abc";

function membership(
  changes: Array<[string, MemberChangeKind, MemberRole?]>,
  members: Array<[string, MemberRole]>,
) {
  return create(MembershipChangedSchema, {
    conversationId: group,
    kind: ConversationKind.GROUP,
    version: 7n,
    members: members.map(([userId, role]) => ({ userId, role })),
    changes: changes.map(([userId, kind, role]) => ({ userId, kind, role: role ?? MemberRole.UNSPECIFIED })),
    changedByUserId: "alice",
  });
}

describe("push frames", () => {
  it("builds message and receipt frames as create() would", () => {
    const message = create(MessageSchema, {
      messageId: group,
      conversationId: group,
      seq: 3n,
      sender: { userId: "bob", deviceId: "phone" },
      ciphertext: new Uint8Array([1, 2, 3]),
    });
    const cursor = new Uint8Array([9, 9]);
    const built = messageFrame(message, cursor);
    const created = create(ServerFrameSchema, { body: { case: "message", value: { message, cursor } } });
    expect(equals(ServerFrameSchema, built, created)).toBe(true);
    expect(toBinary(ServerFrameSchema, built)).toEqual(toBinary(ServerFrameSchema, created));
    expect(built).toEqual(created);
    const receipt = create(ReceiptSchema, { conversationId: group, upToSeq: 3n, messageIds: [group] });
    const receiptCreated = create(ServerFrameSchema, { body: { case: "receipt", value: receipt } });
    expect(receiptFrame(receipt)).toEqual(receiptCreated);
    expect(toBinary(ServerFrameSchema, receiptFrame(receipt))).toEqual(
      toBinary(ServerFrameSchema, receiptCreated),
    );
    const item = create(PushItemSchema, {
      devices: [{ userId: "alice", deviceId: "x" }],
      payload: { case: "message", value: message },
      cursor,
    });
    expect(framesForDevice(item, { userId: "alice", deviceId: "x" } as never)).toEqual([created]);
  });

  it("turns a membership change into each user's view of it", () => {
    const change = membership(
      [
        ["dave", MemberChangeKind.ADDED, MemberRole.MEMBER],
        ["erin", MemberChangeKind.REMOVED],
        ["bob", MemberChangeKind.ROLE_CHANGED, MemberRole.ADMIN],
      ],
      [
        ["alice", MemberRole.OWNER],
        ["bob", MemberRole.ADMIN],
        ["dave", MemberRole.MEMBER],
      ],
    );
    expect(conversationEvents(change, "dave").map((e) => e.kind)).toEqual([ConversationEventKind.ADDED]);
    expect(conversationEvents(change, "erin").map((e) => e.kind)).toEqual([ConversationEventKind.REMOVED]);
    const bob = conversationEvents(change, "bob");
    expect(bob.map((e) => [e.kind, e.members?.map((m) => m.userId), e.role, e.membershipVersion])).toEqual([
      [ConversationEventKind.MEMBERS_JOINED, ["dave"], MemberRole.ADMIN, 7n],
      [ConversationEventKind.MEMBERS_LEFT, ["erin"], MemberRole.ADMIN, 7n],
      [ConversationEventKind.ROLE_CHANGED, ["bob"], MemberRole.ADMIN, 7n],
    ]);
    expect(conversationEvents({ ...change, deleted: true, members: [] }, "alice").map((e) => e.kind)).toEqual(
      [ConversationEventKind.REMOVED],
    );
  });

  it("names contact changes as the user sees them, never telling a block from a removal", () => {
    const view = (state: ConnectionState, previousState: ConnectionState) =>
      contactEvent(create(ContactViewSchema, { userId: "a", otherUserId: "b", state, previousState })).kind;
    expect(view(ConnectionState.PENDING_INCOMING, ConnectionState.NONE)).toBe(
      ContactEventKind.REQUEST_RECEIVED,
    );
    expect(view(ConnectionState.ACCEPTED, ConnectionState.PENDING_OUTGOING)).toBe(ContactEventKind.ACCEPTED);
    expect(view(ConnectionState.BLOCKED, ConnectionState.ACCEPTED)).toBe(ContactEventKind.BLOCKED);
    expect(view(ConnectionState.NONE, ConnectionState.BLOCKED)).toBe(ContactEventKind.UNBLOCKED);
    // The blocked user's view: exactly a removal.
    expect(view(ConnectionState.NONE, ConnectionState.ACCEPTED)).toBe(ContactEventKind.REMOVED);
  });

  it("keeps the typist's own device out of its typing indicator", () => {
    const item = create(PushItemSchema, {
      payload: {
        case: "typing",
        value: { conversationId: group, device: { userId: "bob", deviceId: "phone" }, typing: true },
      },
    });
    expect(framesForDevice(item, { userId: "bob", deviceId: "phone" } as never)).toEqual([]);
    expect(
      framesForDevice(item, { userId: "bob", deviceId: "laptop" } as never).map((f) => f.body.case),
    ).toEqual(["typing"]);
  });
});
