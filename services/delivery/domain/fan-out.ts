import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Message } from "../../../gen/parley/common/v1/message_pb.ts";
import type {
  ContactChanged,
  GroupRenamed,
  MembershipChanged,
} from "../../../gen/parley/events/v1/connection_events_pb.ts";
import { MemberChangeKind } from "../../../gen/parley/events/v1/connection_events_pb.ts";
import type { KeyChanged, PrekeysLow } from "../../../gen/parley/events/v1/key_events_pb.ts";
import { KeyChangeKind } from "../../../gen/parley/events/v1/key_events_pb.ts";
import type { MessageStored, ResendRequested } from "../../../gen/parley/events/v1/message_events_pb.ts";
import type { PresenceChanged, TypingChanged } from "../../../gen/parley/events/v1/presence_events_pb.ts";
import type { ReceiptRecorded } from "../../../gen/parley/events/v1/receipt_events_pb.ts";
import type { Logger } from "../../../lib/logging.ts";
import { acceptedContacts, blockedEitherWay, fellowMembers, liveMembers } from "./audience.ts";
import type { Dispatcher, DispatchSummary } from "./dispatch.ts";
import type { ConversationDirectory, DeviceRef, PlannedItem, RouteDirectory } from "./ports.ts";

export interface FanOutOptions {
  readonly conversations: ConversationDirectory;
  readonly routes: RouteDirectory;
  readonly dispatcher: Dispatcher;
  readonly logger: Logger;
}

/** Why an event was not pushed at all (nothing to do, or a rule says drop it). */
export type Dropped = { readonly dropped: string };

export type FanOutResult = DispatchSummary | Dropped;

/**
 * Who gets each event, as the event contracts (proto/parley/events/v1) say, turned into push
 * items for the dispatcher. Only connected devices are addressed (offline ones Sync or re-fetch
 * when they reconnect); the dispatcher groups them by host.
 */
export interface FanOut {
  /**
   * Each target device gets the message with its own ciphertext and inbox cursor; the sending
   * device, when connected, gets it back without ciphertext or cursor (its seq).
   */
  messageStored(event: MessageStored): Promise<FanOutResult>;
  /** The connected devices of the users the receipt names, except the reader device. */
  receiptRecorded(event: ReceiptRecorded): Promise<FanOutResult>;
  /** The owner's accepted contacts and fellow members, and the owner's other devices (all of them for a removal). */
  keyChanged(event: KeyChanged): Promise<FanOutResult>;
  /** That one device. */
  prekeysLow(event: PrekeysLow): Promise<FanOutResult>;
  /** Each view to its own user's devices only. */
  contactChanged(event: ContactChanged): Promise<FanOutResult>;
  /** The members after the change and the users it removed (all last members when deleted). */
  membershipChanged(event: MembershipChanged): Promise<FanOutResult>;
  /** The group's current members. */
  groupRenamed(event: GroupRenamed): Promise<FanOutResult>;
  /** The message's sending device only; dropped when its user blocks the requester's user. */
  resendRequested(event: ResendRequested): Promise<FanOutResult>;
  /** The user's accepted contacts, never across a block. */
  presenceChanged(event: PresenceChanged): Promise<FanOutResult>;
  /** The conversation's members (the typist's other devices too), never across a block. */
  typingChanged(event: TypingChanged): Promise<FanOutResult>;
}

function sameDevice(a: DeviceRef, b: DeviceRef | undefined): boolean {
  return b !== undefined && a.userId === b.userId && a.deviceId === b.deviceId;
}

function ref(device: { readonly userId: string; readonly deviceId: string }): DeviceRef {
  return { userId: device.userId, deviceId: device.deviceId };
}

/** The message as its sending device gets it back: everything but the ciphertext, and no cursor. */
function ownMessageEcho(message: Message): Message {
  return { ...message, ciphertext: new Uint8Array(0), sharedPayload: false };
}

export function createFanOut(options: FanOutOptions): FanOut {
  const { conversations, routes, dispatcher, logger } = options;

  /** Connected devices of some users, one device left out. */
  const devicesOf = (users: Iterable<string>, except?: DeviceRef): DeviceRef[] => {
    const devices: DeviceRef[] = [];
    for (const user of new Set(users)) {
      for (const route of routes.devicesOf(user)) {
        if (!sameDevice(route.device, except)) devices.push(route.device);
      }
    }
    return devices;
  };

  const durable = (id: string, kind: string) => ({ id, kind, checkpoint: true });

  const one = async (
    source: { id: string; kind: string; checkpoint: boolean },
    devices: readonly DeviceRef[],
    payload: PlannedItem["payload"],
    traceparent: string,
  ): Promise<FanOutResult> => {
    if (devices.length === 0) return { dropped: "no connected recipient" };
    return dispatcher.dispatch(source, [{ devices, payload, traceparent }]);
  };

  return {
    async messageStored(event) {
      const message = event.message;
      if (message === undefined) return { dropped: "no message" };
      const items: PlannedItem[] = event.targets.flatMap((target) => {
        if (target.device === undefined) return [];
        const value: Message = message.sharedPayload
          ? message
          : { ...message, ciphertext: target.ciphertext };
        return [
          {
            devices: [ref(target.device)],
            payload: { case: "message", value },
            cursor: target.cursor,
            traceparent: event.traceparent,
          },
        ];
      });
      // The sending device is no target (it has no ciphertext of its own), but it needs the seq
      // history gave its message: without it every message it sent would be a seq gap it fetches
      // with ListMessages when its partner's next message arrives. Once per message (part 0), and
      // only while it is connected; a device that was offline fills that gap later, as before.
      const sender = message.sender;
      if (event.part === 0 && sender !== undefined && routes.route(ref(sender)) !== undefined) {
        items.push({
          devices: [ref(sender)],
          payload: { case: "message", value: ownMessageEcho(message) },
          traceparent: event.traceparent,
        });
      }
      return dispatcher.dispatch(durable(`m:${message.messageId}:${event.part}`, "message"), items);
    },

    async receiptRecorded(event) {
      const receipt = event.receipt;
      if (receipt === undefined) return { dropped: "no receipt" };
      const reader = receipt.reader === undefined ? undefined : ref(receipt.reader);
      return one(
        durable(`r:${event.eventId}`, "receipt"),
        devicesOf(event.notifyUserIds, reader),
        { case: "receipt", value: receipt },
        event.traceparent,
      );
    },

    async keyChanged(event) {
      if (event.device === undefined) return { dropped: "no device" };
      const owner = event.device.userId;
      const users = [owner, ...fellowMembers(conversations, owner)];
      // A removed device gets its own removal too: the edge holding its stream closes it with
      // CLOSE_REASON_DEVICE_REVOKED (any other change is news to everyone but that device).
      const except = event.kind === KeyChangeKind.DEVICE_REMOVED ? undefined : ref(event.device);
      return one(
        durable(`k:${event.eventId}`, "key_changed"),
        devicesOf(users, except),
        { case: "keyChanged", value: event },
        event.traceparent,
      );
    },

    async prekeysLow(event) {
      if (event.device === undefined) return { dropped: "no device" };
      return one(
        durable(`pk:${event.eventId}`, "prekeys_low"),
        [ref(event.device)],
        { case: "prekeysLow", value: event },
        event.traceparent,
      );
    },

    async contactChanged(event) {
      // One item per view, each addressed only to its own user's devices: the other user's view
      // never reaches them (it could reveal a block).
      const items: PlannedItem[] = [];
      for (const view of event.views) {
        const devices = devicesOf([view.userId]);
        if (devices.length > 0) {
          items.push({ devices, payload: { case: "contact", value: view }, traceparent: event.traceparent });
        }
      }
      if (items.length === 0) return { dropped: "no connected recipient" };
      return dispatcher.dispatch(durable(`c:${event.eventId}`, "contact"), items);
    },

    async membershipChanged(event) {
      const users = new Set(event.members.map((m) => m.userId));
      for (const change of event.changes) {
        if (change.kind === MemberChangeKind.REMOVED) users.add(change.userId);
      }
      if (event.deleted) {
        // A deletion carries no members: tell the last members the view knows (it keeps them).
        for (const member of conversations.conversation(event.conversationId)?.memberUserIds ?? []) {
          users.add(member);
        }
      }
      return one(
        durable(`mc:${event.eventId}`, "membership"),
        devicesOf(users),
        { case: "membership", value: event },
        event.traceparent,
      );
    },

    async groupRenamed(event) {
      const members = liveMembers(conversations, event.conversationId);
      if (members === undefined) {
        logger.debug({ conversation_id: event.conversationId }, "rename of a group the view does not know");
        return { dropped: "unknown group" };
      }
      return one(
        durable(`g:${event.eventId}`, "group_renamed"),
        devicesOf(members),
        { case: "groupRenamed", value: event },
        event.traceparent,
      );
    },

    async resendRequested(event) {
      if (event.sender === undefined || event.requester === undefined) return { dropped: "no device" };
      if (conversations.blocks(event.sender.userId, event.requester.userId)) {
        return { dropped: "the sender blocks the requester" };
      }
      return one(
        durable(`rs:${event.eventId}`, "resend_request"),
        [ref(event.sender)],
        { case: "resendRequest", value: event },
        event.traceparent,
      );
    },

    async presenceChanged(event) {
      const changedAt = event.changedAt === undefined ? 0 : timestampMs(event.changedAt);
      return one(
        { id: `pr:${event.userId}:${changedAt}`, kind: "presence", checkpoint: false },
        devicesOf(acceptedContacts(conversations, event.userId)),
        { case: "presence", value: event },
        event.traceparent,
      );
    },

    async typingChanged(event) {
      const typist = event.device;
      if (typist === undefined) return { dropped: "no device" };
      const members = liveMembers(conversations, event.conversationId);
      if (members === undefined || !members.includes(typist.userId)) return { dropped: "not a member" };
      const audience = members.filter(
        (m) => m === typist.userId || !blockedEitherWay(conversations, typist.userId, m),
      );
      const changedAt = event.changedAt === undefined ? 0 : timestampMs(event.changedAt);
      return one(
        {
          id: `t:${event.conversationId}:${typist.userId}/${typist.deviceId}:${changedAt}`,
          kind: "typing",
          checkpoint: false,
        },
        devicesOf(audience, ref(typist)),
        { case: "typing", value: event },
        event.traceparent,
      );
    },
  };
}
