import { v7 as uuidv7 } from "uuid";
import {
  decodePageToken,
  effectivePageSize,
  encodePageToken,
  invalidPageToken,
  positionInteger,
  positionString,
} from "../../../lib/page-token.ts";
import type { RateLimiter } from "../../../lib/rate-limit.ts";
import { isLiveMember, membershipAfterCatchUp } from "../../../lib/views/membership-catch-up.ts";
import { decodeCursor, encodeCursor } from "./cursor.ts";
import { conversationNotFound, invalidCursor, messageNotFound, rateLimited } from "./errors.ts";
import { messageStoredEvents, receiptRecordedEvent, resendRequestedEvent } from "./events.ts";
import type { HistoryStore, StoreMessageResult } from "./history-store.ts";
import type {
  DeviceMessage,
  DeviceRef,
  InboxItem,
  MemberReceiptState,
  ReceiptKind,
  ReceiptState,
  SeqOrder,
  StoredMessage,
} from "./model.ts";
import { EMPTY_STATE, sameDevice } from "./model.ts";
import type { CatchingUpDirectory, ConversationMembership, MembershipSource } from "./ports.ts";

export const DEFAULT_RETENTION_MS = 30 * 24 * 60 * 60 * 1000;
/** Page sizes of history_service.proto: the default when 0, and the most a call returns. */
export const SYNC_PAGE = { default: 100, max: 1000 } as const;
export const LIST_MESSAGES_PAGE = { default: 50, max: 1000 } as const;
export const RECEIPTS_PAGE = { default: 100, max: 1000 } as const;
/** A page stays under about 2 MiB (the proto's cap), whatever its item count. */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;

/** A MessageAccepted as history ingests it (decoded by the consumer adapter). */
export interface AcceptedMessage {
  readonly messageId: string;
  readonly conversationId: string;
  readonly sender: DeviceRef;
  readonly clientMessageId: string;
  readonly kind: number;
  readonly payload:
    | { readonly case: "shared"; readonly ciphertext: Uint8Array }
    | {
        readonly case: "perDevice";
        readonly recipients: readonly {
          readonly userId: string;
          readonly devices: readonly { readonly deviceId: string; readonly ciphertext: Uint8Array }[];
        }[];
      };
  readonly acceptedAt: Date;
  readonly recipientDevices: readonly DeviceRef[];
  readonly membershipVersion: bigint;
  readonly traceparent: string;
  readonly forceTrace: boolean;
}

/** An inbox item as Sync returns it, with its cursor. */
export type SyncItem = InboxItem & { readonly cursor: Uint8Array };

export interface SyncResult {
  readonly items: readonly SyncItem[];
  readonly nextCursor: Uint8Array;
  readonly more: boolean;
  readonly watermarks: readonly { readonly conversationId: string; readonly lastSeq: number }[];
}

export interface ListMessagesCommand {
  readonly device: DeviceRef;
  readonly conversationId: string;
  readonly afterSeq: number;
  readonly beforeSeq: number;
  readonly order: SeqOrder;
  readonly pageSize: number;
  readonly pageToken: string;
}

export interface MarkCommand {
  readonly device: DeviceRef;
  readonly conversationId: string;
  readonly target: { readonly upToSeq: number } | { readonly messageIds: readonly string[] };
  /** When the device recorded it; undefined: now. A future time is clamped to now. */
  readonly at: Date | undefined;
  readonly traceparent: string;
}

export interface MemberReceipt {
  readonly userId: string;
  readonly state: ReceiptState;
  readonly deliveredAt: Date | undefined;
  readonly readAt: Date | undefined;
}

export interface ReceiptsResult {
  readonly members: readonly MemberReceipt[];
  readonly nextPageToken: string;
  readonly messageSeq: number;
  readonly recipientCount: number;
  readonly deliveredCount: number;
  readonly readCount: number;
}

export interface HistoryDeps {
  readonly store: HistoryStore;
  /**
   * Membership, from the local view of `chat.memberships`: member-only reads call the connection
   * service only when the view does not know the reader as a member yet (`membership`).
   */
  readonly conversations: CatchingUpDirectory;
  /** Asked when the view lags (see lib/views/membership-catch-up.ts); without it the view decides. */
  readonly membership?: MembershipSource;
  /** RequestResend per device (`user/device`), one token per request. */
  readonly resendLimiter: RateLimiter;
  /** How long messages, inbox items and receipts are kept after accepted_at. Default 30 days. */
  readonly retentionMs?: number;
  readonly now?: () => Date;
  readonly newEventId?: () => string;
  /** Called after a change appended events (to wake the outbox relay). */
  readonly onChange?: () => void;
}

export type History = ReturnType<typeof createHistory>;

/** The history use cases over the store port and the membership view. */
export function createHistory(deps: HistoryDeps) {
  const { store, conversations } = deps;
  const retentionMs = deps.retentionMs ?? DEFAULT_RETENTION_MS;
  const now = deps.now ?? (() => new Date());
  const newEventId = deps.newEventId ?? uuidv7;
  const changed = () => deps.onChange?.();

  const requireMember = async (conversationId: string, userId: string): Promise<ConversationMembership> => {
    const conversation = await membershipAfterCatchUp(conversations, deps.membership, userId, conversationId);
    if (conversation === undefined || !isLiveMember(conversation, userId)) {
      throw conversationNotFound(conversationId);
    }
    return conversation;
  };

  /** Ingests one MessageAccepted (idempotent: a redelivery or a sender retry stores nothing new). */
  async function ingest(accepted: AcceptedMessage): Promise<StoreMessageResult> {
    const pairwise = new Map<string, Uint8Array>();
    if (accepted.payload.case === "perDevice") {
      for (const recipient of accepted.payload.recipients) {
        for (const device of recipient.devices) {
          pairwise.set(deviceKey({ userId: recipient.userId, deviceId: device.deviceId }), device.ciphertext);
        }
      }
    }
    const seen = new Set<string>();
    const targets: { device: DeviceRef; ciphertext: Uint8Array | undefined }[] = [];
    for (const device of accepted.recipientDevices) {
      const key = deviceKey(device);
      if (sameDevice(device, accepted.sender) || seen.has(key)) continue;
      seen.add(key);
      targets.push({
        device: { userId: device.userId, deviceId: device.deviceId },
        ciphertext: pairwise.get(key),
      });
    }
    const recipientUserIds = [...new Set(targets.map((t) => t.device.userId))].filter(
      (u) => u !== accepted.sender.userId,
    );
    const message: StoredMessage = {
      messageId: accepted.messageId,
      conversationId: accepted.conversationId,
      seq: 0,
      sender: accepted.sender,
      clientMessageId: accepted.clientMessageId,
      kind: accepted.kind,
      sharedCiphertext: accepted.payload.case === "shared" ? accepted.payload.ciphertext : undefined,
      acceptedAt: accepted.acceptedAt,
      traceparent: accepted.traceparent,
      forceTrace: accepted.forceTrace,
    };
    const result = await store.storeMessage(
      {
        message,
        targets,
        recipientUserIds,
        membershipVersion: accepted.membershipVersion,
        storedAt: now(),
        expiresAt: new Date(accepted.acceptedAt.getTime() + retentionMs),
      },
      (assigned) => messageStoredEvents(assigned),
    );
    if (result.outcome === "stored") changed();
    return result;
  }

  async function sync(command: {
    readonly device: DeviceRef;
    readonly cursor: Uint8Array;
    readonly pageSize: number;
    readonly fromOldestUnacknowledged?: boolean;
  }): Promise<SyncResult> {
    const requested = decodeCursor(command.device, command.cursor);
    const at = now();
    const oldest = command.fromOldestUnacknowledged
      ? await store.oldestUnacknowledgedPosition(command.device, at)
      : undefined;
    const after = oldest === undefined ? requested : Math.min(requested, oldest - 1);
    const limit = effectivePageSize(command.pageSize, SYNC_PAGE.default, SYNC_PAGE.max);
    const page = await store.readInbox({ device: command.device, afterPosition: after, limit, now: at });
    if (requested > page.lastPosition) throw invalidCursor("beyond the end of the device's inbox");
    const { taken, trimmed } = takeWithinBytes(page.items, inboxItemSize);
    const items = taken.map((item) => ({ ...item, cursor: encodeCursor(command.device, item.position) }));
    const last = items.at(-1);
    const conversationIds = [
      ...new Set(items.flatMap((i) => (i.kind === "message" ? [i.message.conversationId] : []))),
    ];
    const lastSeqs =
      conversationIds.length === 0 ? new Map<string, number>() : await store.lastSeqs(conversationIds);
    return {
      items,
      // An empty page still answers a real position (the end of the inbox): a device that stores
      // it and resumes from it gets everything stored after this call, where an empty cursor
      // would mean "live only" and skip what arrives before its stream is routed.
      nextCursor:
        last === undefined ? encodeCursor(command.device, Math.max(after, page.lastPosition)) : last.cursor,
      more: page.more || trimmed,
      watermarks: conversationIds.map((conversationId) => ({
        conversationId,
        lastSeq: lastSeqs.get(conversationId) ?? 0,
      })),
    };
  }

  async function listMessages(command: ListMessagesCommand): Promise<{
    readonly messages: readonly DeviceMessage[];
    readonly nextPageToken: string;
    readonly lastSeq: number;
  }> {
    await requireMember(command.conversationId, command.device.userId);
    const at = now();
    const scope = [
      command.device.userId,
      command.device.deviceId,
      command.conversationId,
      command.afterSeq,
      command.beforeSeq,
      command.order,
    ];
    let { afterSeq, beforeSeq } = command;
    if (command.pageToken !== "") {
      const continueFrom = seqPosition(decodePageToken(command.pageToken, "messages", scope, at));
      if (command.order === "newest_first")
        beforeSeq = beforeSeq === 0 ? continueFrom : Math.min(beforeSeq, continueFrom);
      else afterSeq = Math.max(afterSeq, continueFrom);
    }
    const limit = effectivePageSize(command.pageSize, LIST_MESSAGES_PAGE.default, LIST_MESSAGES_PAGE.max);
    const page = await store.listMessages({
      conversationId: command.conversationId,
      device: command.device,
      afterSeq,
      beforeSeq,
      order: command.order,
      limit,
      now: at,
    });
    const { taken, trimmed } = takeWithinBytes(page.messages, messageSize);
    const last = taken.at(-1);
    return {
      messages: taken,
      nextPageToken:
        (page.more || trimmed) && last !== undefined
          ? encodePageToken("messages", scope, [last.seq], at)
          : "",
      lastSeq: page.lastSeq,
    };
  }

  async function mark(
    kind: ReceiptKind,
    command: MarkCommand,
  ): Promise<{ readonly recorded: boolean; readonly state: ReceiptState }> {
    await requireMember(command.conversationId, command.device.userId);
    const at = now();
    const result = await store.recordReceipt(
      {
        conversationId: command.conversationId,
        reader: command.device,
        kind,
        target: command.target,
        at: command.at === undefined || command.at > at ? at : command.at,
        now: at,
        receiptExpiresAt: new Date(at.getTime() + retentionMs),
        devicesSeenSince: new Date(at.getTime() - retentionMs),
      },
      (recorded) =>
        recorded.notifyUserIds.length === 0
          ? undefined
          : receiptRecordedEvent(recorded, {
              eventId: newEventId(),
              recordedAt: at,
              traceparent: command.traceparent,
            }),
    );
    if (result.recorded) changed();
    return { recorded: result.recorded, state: result.state };
  }

  async function getReceipts(command: {
    readonly device: DeviceRef;
    readonly conversationId: string;
    /** Empty: the conversation as a whole. */
    readonly messageId: string;
    readonly pageSize: number;
    readonly pageToken: string;
  }): Promise<ReceiptsResult> {
    const conversation = await requireMember(command.conversationId, command.device.userId);
    const at = now();
    const scope = [command.device.userId, command.device.deviceId, command.conversationId, command.messageId];
    const after =
      command.pageToken === ""
        ? undefined
        : positionString(decodePageToken(command.pageToken, "receipts", scope, at), 0);
    const limit = effectivePageSize(command.pageSize, RECEIPTS_PAGE.default, RECEIPTS_PAGE.max);
    let members = [...conversation.memberUserIds].sort();
    let perMessage:
      | ReadonlyMap<string, { deliveredAt: Date | undefined; readAt: Date | undefined }>
      | undefined;
    let counts = { messageSeq: 0, recipientCount: 0, deliveredCount: 0, readCount: 0 };
    if (command.messageId !== "") {
      const found = await store.messageReceipts({
        conversationId: command.conversationId,
        messageId: command.messageId,
        now: at,
      });
      if (found === undefined) throw messageNotFound(command.messageId);
      const senderUserId = found.message.sender.userId;
      members = members.filter((u) => u !== senderUserId);
      const current = new Set(members);
      const recipients = found.recipients.filter((r) => current.has(r.userId));
      perMessage = new Map(recipients.map((r) => [r.userId, r]));
      counts = {
        messageSeq: found.message.seq,
        recipientCount: recipients.length,
        deliveredCount: recipients.filter((r) => r.deliveredAt !== undefined).length,
        readCount: recipients.filter((r) => r.readAt !== undefined).length,
      };
    }
    const remaining = after === undefined ? members : members.filter((u) => u > after);
    const page = remaining.slice(0, limit);
    const states: ReadonlyMap<string, MemberReceiptState> =
      page.length === 0 ? new Map() : await store.receiptStates(command.conversationId, page);
    const entries = page.map((userId): MemberReceipt => {
      const state = states.get(userId);
      const times = perMessage === undefined ? undefined : perMessage.get(userId);
      return {
        userId,
        state: {
          deliveredUpToSeq: state?.deliveredUpToSeq ?? EMPTY_STATE.deliveredUpToSeq,
          readUpToSeq: state?.readUpToSeq ?? EMPTY_STATE.readUpToSeq,
        },
        deliveredAt: perMessage === undefined ? state?.deliveredMovedAt : times?.deliveredAt,
        readAt: perMessage === undefined ? state?.readMovedAt : times?.readAt,
      };
    });
    const last = page.at(-1);
    return {
      members: entries,
      nextPageToken:
        remaining.length > page.length && last !== undefined
          ? encodePageToken("receipts", scope, [last], at)
          : "",
      ...counts,
    };
  }

  async function requestResend(command: {
    readonly device: DeviceRef;
    readonly conversationId: string;
    readonly messageId: string;
    readonly identityKey: Uint8Array;
    readonly traceparent: string;
  }): Promise<void> {
    await requireMember(command.conversationId, command.device.userId);
    const limit = await deps.resendLimiter.take(deviceKey(command.device));
    if (!limit.allowed) throw rateLimited(limit.retryAfterMs);
    const at = now();
    const found = await store.findMessageForDevice({
      conversationId: command.conversationId,
      messageId: command.messageId,
      device: command.device,
      now: at,
    });
    if (found === undefined || !found.addressed) throw messageNotFound(command.messageId);
    await store.appendEvents([
      resendRequestedEvent({
        eventId: newEventId(),
        message: found.message,
        requester: command.device,
        identityKey: command.identityKey,
        requestedAt: at,
        traceparent: command.traceparent,
      }),
    ]);
    changed();
  }

  /**
   * KeyChanged DEVICE_REMOVED: the device's undelivered inbox is dropped (its keys are gone, so
   * nothing in it could be decrypted by a device registered under the same id), and messages
   * accepted before the removal that arrive late get no inbox item for it. Idempotent.
   */
  async function deviceRemoved(device: DeviceRef, removedAt: Date): Promise<number> {
    return store.dropDevice({ device: { userId: device.userId, deviceId: device.deviceId }, removedAt });
  }

  return {
    ingest,
    deviceRemoved,
    sync,
    listMessages,
    markDelivered: (command: MarkCommand) => mark("delivered", command),
    markRead: (command: MarkCommand) => mark("read", command),
    getReceipts,
    requestResend,
  };
}

function deviceKey(device: DeviceRef): string {
  return `${device.userId}/${device.deviceId}`;
}

/** Approximate encoded size of a message in a response (ciphertext plus ids and metadata). */
function messageSize(message: DeviceMessage): number {
  return message.ciphertext.length + 320;
}

function inboxItemSize(item: InboxItem): number {
  return item.kind === "message" ? messageSize(item.message) : 160 + 40 * item.receipt.messageIds.length;
}

/** The leading items that fit in MAX_PAGE_BYTES (always at least one), and whether any were left out. */
function takeWithinBytes<T>(
  items: readonly T[],
  size: (item: T) => number,
): { taken: T[]; trimmed: boolean } {
  let total = 0;
  const taken: T[] = [];
  for (const item of items) {
    total += size(item);
    if (taken.length > 0 && total > MAX_PAGE_BYTES) return { taken, trimmed: true };
    taken.push(item);
  }
  return { taken, trimmed: false };
}

/** The seq a ListMessages token continues from (seqs start at 1). */
function seqPosition(position: readonly (string | number)[]): number {
  const seq = positionInteger(position, 0);
  if (seq < 1) throw invalidPageToken("malformed");
  return seq;
}
