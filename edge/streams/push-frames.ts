import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import type { Message, Receipt } from "../../gen/parley/common/v1/message_pb.ts";
import type { PushItem } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type {
  ContactEventSchema,
  ConversationEvent,
  ConversationEventSchema,
  KeyChangeKind,
  PresenceState,
  ServerFrame,
} from "../../gen/parley/edge/v1/frames_pb.ts";
import {
  ContactEventKind,
  ConversationEventKind,
  ServerFrameSchema,
} from "../../gen/parley/edge/v1/frames_pb.ts";
import type { ContactView, MembershipChanged } from "../../gen/parley/events/v1/connection_events_pb.ts";
import {
  ConnectionState,
  ConversationKind,
  MemberChangeKind,
} from "../../gen/parley/events/v1/connection_events_pb.ts";

/**
 * PushItem -> the ServerFrames one device gets for it (none, one, or several for a membership
 * change seen from the device's user). Pure: the stream applies its own filters (presence interest)
 * when it queues them.
 */
export function framesForDevice(item: PushItem, device: DeviceAddress): ServerFrame[] {
  const payload = item.payload;
  switch (payload.case) {
    case "message":
      return [messageFrame(payload.value, item.cursor)];
    case "receipt":
      return [receiptFrame(payload.value)];
    case "presence": {
      const p = payload.value;
      return [
        frame({
          case: "presence",
          // The edge enum has the same numbers as the event's.
          value: { userId: p.userId, state: p.state as number as PresenceState, lastSeen: p.lastSeen },
        }),
      ];
    }
    case "typing": {
      const t = payload.value;
      // The typist's own device never sees its own indicator.
      if (t.device !== undefined && sameDevice(t.device, device)) return [];
      return [
        frame({
          case: "typing",
          value: {
            conversationId: t.conversationId,
            typist: t.device,
            typing: t.typing,
            expiresAt: t.expiresAt,
          },
        }),
      ];
    }
    case "keyChanged": {
      const k = payload.value;
      return [
        frame({
          case: "keyChanged",
          value: {
            device: k.device,
            kind: k.kind as number as KeyChangeKind,
            identityKey: k.identityKey,
            effectiveAt: k.effectiveAt,
            previousValidUntil: k.previousValidUntil,
          },
        }),
      ];
    }
    case "prekeysLow": {
      const p = payload.value;
      return [
        frame({
          case: "prekeysLow",
          value: {
            oneTimePrekeyCount: p.oneTimePrekeyCount,
            lowWatermark: p.lowWatermark,
            lastResortPrekeyUsed: p.lastResortPrekeyUsed,
          },
        }),
      ];
    }
    case "contact":
      // Delivery addresses a view to its own user's devices only (a rule of PushItem).
      return payload.value.userId === device.userId
        ? [frame({ case: "contact", value: contactEvent(payload.value) })]
        : [];
    case "membership":
      return conversationEvents(payload.value, device.userId).map((value) =>
        frame({ case: "conversation", value }),
      );
    case "groupRenamed": {
      const g = payload.value;
      return [
        frame({
          case: "conversation",
          value: {
            kind: ConversationEventKind.RENAMED,
            conversationId: g.conversationId,
            conversationKind: ConversationKind.GROUP,
            name: g.name,
            changedByUserId: g.changedByUserId,
            changedAt: g.changedAt,
          },
        }),
      ];
    }
    case "resendRequest": {
      const r = payload.value;
      return [
        frame({
          case: "resendRequest",
          value: {
            requester: r.requester,
            conversationId: r.conversationId,
            messageId: r.messageId,
            identityKey: r.identityKey,
          },
        }),
      ];
    }
    case undefined:
      return [];
  }
}

function frame(body: MessageInitShape<typeof ServerFrameSchema>["body"]): ServerFrame {
  return create(ServerFrameSchema, { body });
}

/**
 * The frame of a pushed message, built as the plain object `create` would return (protobuf-es
 * messages are plain objects): the push path builds one per message and device, and `create`
 * walks the schema for each (push-frames.test.ts checks both are equal).
 */
export function messageFrame(message: Message, cursor: Uint8Array): ServerFrame {
  return {
    $typeName: "parley.edge.v1.ServerFrame",
    body: { case: "message", value: { $typeName: "parley.edge.v1.ServerMessage", message, cursor } },
  };
}

/** The frame of a pushed receipt, like `messageFrame`. */
export function receiptFrame(receipt: Receipt): ServerFrame {
  return { $typeName: "parley.edge.v1.ServerFrame", body: { case: "receipt", value: receipt } };
}

export function sameDevice(a: DeviceAddress, b: DeviceAddress): boolean {
  return a.userId === b.userId && a.deviceId === b.deviceId;
}

/** A ContactView as the ContactEvent its user's devices get. */
export function contactEvent(view: ContactView): MessageInitShape<typeof ContactEventSchema> {
  return {
    kind: contactEventKind(view),
    otherUserId: view.otherUserId,
    conversationId: view.state === ConnectionState.ACCEPTED ? view.conversationId : "",
    bySelf: view.bySelf,
  };
}

function contactEventKind(view: ContactView): ContactEventKind {
  switch (view.state) {
    case ConnectionState.PENDING_INCOMING:
      return ContactEventKind.REQUEST_RECEIVED;
    case ConnectionState.PENDING_OUTGOING:
      return ContactEventKind.REQUEST_SENT;
    case ConnectionState.ACCEPTED:
      return ContactEventKind.ACCEPTED;
    case ConnectionState.BLOCKED:
      return ContactEventKind.BLOCKED;
    default:
      // NONE: after a block only the blocker saw BLOCKED, so NONE after BLOCKED is an unblock;
      // anything else (rejected, cancelled, deleted, or blocked by the other user) looks removed.
      return view.previousState === ConnectionState.BLOCKED
        ? ContactEventKind.UNBLOCKED
        : ContactEventKind.REMOVED;
  }
}

type ConversationEventInit = MessageInitShape<typeof ConversationEventSchema>;

/**
 * A membership change as `userId` sees it (frames.proto ConversationEvent): added -> ADDED,
 * removed (or the conversation deleted) -> REMOVED; otherwise one frame per kind of change among
 * the other members: MEMBERS_JOINED, MEMBERS_LEFT, ROLE_CHANGED (the user's own role change
 * included). Every frame carries the user's role after the change and the membership version.
 */
export function conversationEvents(change: MembershipChanged, userId: string): ConversationEventInit[] {
  const own = change.members.find((m) => m.userId === userId);
  const ownChange = change.changes.find((c) => c.userId === userId);
  const common = {
    conversationId: change.conversationId,
    conversationKind: change.kind as number as ConversationEvent["conversationKind"],
    changedByUserId: change.changedByUserId,
    membershipVersion: change.version,
    changedAt: change.changedAt,
  };
  const role = (own?.role ?? 0) as number as ConversationEvent["role"];
  if (change.deleted || own === undefined || ownChange?.kind === MemberChangeKind.REMOVED) {
    return [{ ...common, kind: ConversationEventKind.REMOVED }];
  }
  if (ownChange?.kind === MemberChangeKind.ADDED) {
    // The user fetches the conversation (members included) with GetConversation.
    return [{ ...common, kind: ConversationEventKind.ADDED, role }];
  }
  const byKind = (kind: MemberChangeKind) =>
    change.changes
      .filter((c) => c.kind === kind && (kind === MemberChangeKind.ROLE_CHANGED || c.userId !== userId))
      .map((c) => ({ userId: c.userId, role: c.role as number as ConversationEvent["role"] }));
  const events: ConversationEventInit[] = [];
  const joined = byKind(MemberChangeKind.ADDED);
  if (joined.length > 0)
    events.push({ ...common, kind: ConversationEventKind.MEMBERS_JOINED, role, members: joined });
  const left = byKind(MemberChangeKind.REMOVED).map((m) => ({
    userId: m.userId,
    role: 0 as ConversationEvent["role"],
  }));
  if (left.length > 0)
    events.push({ ...common, kind: ConversationEventKind.MEMBERS_LEFT, role, members: left });
  const roles = byKind(MemberChangeKind.ROLE_CHANGED);
  if (roles.length > 0)
    events.push({ ...common, kind: ConversationEventKind.ROLE_CHANGED, role, members: roles });
  return events;
}
