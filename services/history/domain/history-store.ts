import type { Outbox, OutboxEvent } from "../../../lib/outbox.ts";
import type {
  DeviceMessage,
  DeviceRef,
  InboxItem,
  MemberReceiptState,
  MessageRecipientState,
  ReceiptKind,
  ReceiptRecord,
  ReceiptState,
  SeqOrder,
  StoredMessage,
} from "./model.ts";

/**
 * The history service's storage port: messages once per conversation, pairwise ciphertexts per
 * device, per-device inboxes, per-member receipt state, and an outbox for the events of each change.
 * The embedded adapter is SQLite (adapters/sqlite); the cluster one will be Cassandra. Every
 * adapter passes `describeHistoryStoreContract` (history-store.contract.ts).
 *
 * Each write method is ONE atomic step: its checks, its writes and the events it appends to the
 * outbox commit together or not at all, so a crash anywhere leaves either nothing or everything,
 * and a redelivered event finds what it wrote.
 *
 * Times are passed in (`now`, `expiresAt`), never read from a clock, so the domain decides them.
 * Expired rows (`expiresAt <= now`) are never returned, whether or not they were swept yet.
 */
export interface HistoryStore {
  /** The events appended by the write methods, for the outbox relay. */
  readonly outbox: Outbox;

  /**
   * Stores an accepted message, idempotently:
   * - when `message.messageId` is stored already, or the same (sender user, sender device,
   *   client message id) is, nothing is written and the stored message's seq is returned
   *   (`duplicate`): its events were appended when it was stored, in the same step;
   * - otherwise it assigns the conversation's next seq (last + 1: contiguous, never reused, even
   *   after messages expire), stores the message, one inbox item per target (except a device
   *   removed at or after the message's accepted_at, see `dropDevice`) at the target device's
   *   next inbox position (positions only grow, so no item is ever placed before a position
   *   already handed out), one receipt row per recipient user, then appends `events(assigned)`.
   *   If `events` throws, nothing is stored and no seq is used.
   * `events` must depend on its argument only: an adapter may call it more than once for one
   * message, and for another message of the conversation whose interrupted step it finishes first.
   */
  storeMessage(
    input: StoreMessageInput,
    events: (assigned: AssignedMessage) => readonly OutboxEvent[],
  ): Promise<StoreMessageResult>;

  /**
   * A device's inbox strictly after `afterPosition`, in position order, at most `limit` items;
   * `more` when further items follow. `lastPosition` is the highest position ever given to the
   * device (0 when none), so a cursor beyond it can be refused.
   */
  readInbox(input: {
    readonly device: DeviceRef;
    readonly afterPosition: number;
    readonly limit: number;
    readonly now: Date;
  }): Promise<{
    readonly items: readonly InboxItem[];
    readonly more: boolean;
    readonly lastPosition: number;
  }>;

  /**
   * The inbox position of the device's oldest message not yet acknowledged (its row still in the
   * inbox and not expired), or undefined when none is left.
   */
  oldestUnacknowledgedPosition(device: DeviceRef, now: Date): Promise<number | undefined>;

  /** The highest seq assigned so far in each conversation (0 for a conversation with none). */
  lastSeqs(conversationIds: readonly string[]): Promise<ReadonlyMap<string, number>>;

  /**
   * Retained messages of a conversation with `afterSeq < seq < beforeSeq` (`beforeSeq` 0: no upper
   * bound), in `order`, at most `limit`, each with `device`'s ciphertext (empty for a pairwise
   * message without one); `more` when the range holds further messages.
   */
  listMessages(input: {
    readonly conversationId: string;
    readonly device: DeviceRef;
    readonly afterSeq: number;
    readonly beforeSeq: number;
    readonly order: SeqOrder;
    readonly limit: number;
    readonly now: Date;
  }): Promise<{
    readonly messages: readonly DeviceMessage[];
    readonly more: boolean;
    readonly lastSeq: number;
  }>;

  /**
   * Records a delivered or read acknowledgement from `input.reader`, in one step:
   * 1. the messages it names: every seq up to `upToSeq` clamped to the last seq, or the retained
   *    messages of the conversation among `messageIds` (others are ignored);
   * 2. removes those messages from the reader device's inbox;
   * 3. marks them delivered (and, for read, read) for the reader's user where they were not yet,
   *    remembering `at` as when;
   * 4. advances the user's watermarks (read implies delivered) by `advanceWatermark`;
   * 5. when that changed anything (`recorded`): if `event` returns an event, appends it, and puts
   *    the receipt in the inbox of every known device (seen since `devicesSeenSince`) of
   *    `notifyUserIds` but the reader device, replacing that device's earlier receipt of the same
   *    reader and kind in the conversation (merged by `mergeReceipt`), expiring at
   *    `receiptExpiresAt`.
   * Repeating it changes nothing and returns `recorded: false`.
   */
  recordReceipt(
    input: RecordReceiptInput,
    event: (recorded: RecordedReceipt) => OutboxEvent | undefined,
  ): Promise<RecordReceiptResult>;

  /** The receipt state of each given user in a conversation (users without one are left out). */
  receiptStates(
    conversationId: string,
    userIds: readonly string[],
  ): Promise<ReadonlyMap<string, MemberReceiptState>>;

  /** A retained message of the conversation with its per-recipient receipt state; undefined when not found. */
  messageReceipts(input: {
    readonly conversationId: string;
    readonly messageId: string;
    readonly now: Date;
  }): Promise<
    { readonly message: StoredMessage; readonly recipients: readonly MessageRecipientState[] } | undefined
  >;

  /**
   * A retained message of the conversation and whether it was addressed to `device` (the device
   * was one of its targets); undefined when not found.
   */
  findMessageForDevice(input: {
    readonly conversationId: string;
    readonly messageId: string;
    readonly device: DeviceRef;
    readonly now: Date;
  }): Promise<{ readonly message: StoredMessage; readonly addressed: boolean } | undefined>;

  /**
   * The device was removed at `removedAt` (key's KeyChanged DEVICE_REMOVED), in one step:
   * 1. drops its inbox: every receipt item, and every message item except those of messages
   *    accepted after `removedAt` (those can only be for the device id registered anew);
   * 2. remembers the removal (a later one moves it forward, an earlier one never back), so a
   *    message accepted up to then but stored later gets no inbox item (nor target) for the
   *    device, and receipts skip the device until it is seen again after the removal.
   * The position counter stays (positions only grow). Idempotent. Returns the inbox items dropped.
   */
  dropDevice(input: { readonly device: DeviceRef; readonly removedAt: Date }): Promise<number>;

  /** Appends events with no other change (requests that store nothing, like RequestResend). */
  appendEvents(events: readonly OutboxEvent[]): Promise<void>;

  /**
   * Physically removes what expired at `now`: messages, their ciphertexts and receipt rows, and
   * inbox items. Returns how many rows it removed. Engines that expire rows themselves (Cassandra
   * TTL) return 0. Seq counters and inbox position counters are never removed.
   */
  sweepExpired(now: Date): Promise<number>;

  close(): void;
}

export interface StoreMessageInput {
  readonly message: StoredMessage;
  /**
   * The devices that get the message (the sending device excluded, each once), with their pairwise
   * ciphertext (undefined for a shared payload, or a pairwise message without one for the device).
   */
  readonly targets: readonly { readonly device: DeviceRef; readonly ciphertext: Uint8Array | undefined }[];
  /** The users the message is for, the sender's user left out: their receipt rows. */
  readonly recipientUserIds: readonly string[];
  readonly membershipVersion: bigint;
  readonly storedAt: Date;
  /** When the message, its ciphertexts, inbox items and receipt rows expire. */
  readonly expiresAt: Date;
}

/** What storeMessage assigned, for the events it appends. */
export interface AssignedMessage {
  readonly message: StoredMessage;
  readonly targets: readonly {
    readonly device: DeviceRef;
    readonly ciphertext: Uint8Array | undefined;
    /** The device's inbox position of the message. */
    readonly position: number;
  }[];
  readonly storedAt: Date;
}

export type StoreMessageResult =
  | { readonly outcome: "stored"; readonly seq: number }
  | {
      readonly outcome: "duplicate";
      /** Which key matched: a redelivery (same message id) or a sender retry with a new id. */
      readonly by: "message_id" | "client_message_id";
      /** The message id and seq that were stored first. */
      readonly messageId: string;
      readonly seq: number;
    };

export interface RecordReceiptInput {
  readonly conversationId: string;
  readonly reader: DeviceRef;
  readonly kind: ReceiptKind;
  readonly target: { readonly upToSeq: number } | { readonly messageIds: readonly string[] };
  /** When the device recorded it (already clamped to `now`). */
  readonly at: Date;
  readonly now: Date;
  /** When the receipt items placed in inboxes expire. */
  readonly receiptExpiresAt: Date;
  /** Devices last seen before this get no receipt items (they are gone or long idle). */
  readonly devicesSeenSince: Date;
}

/** What recordReceipt recorded, for its event. */
export interface RecordedReceipt {
  readonly receipt: ReceiptRecord;
  /** The senders' users of the newly covered messages and, for read, the reader's user; sorted. */
  readonly notifyUserIds: readonly string[];
}

export interface RecordReceiptResult {
  readonly recorded: boolean;
  /** The reader user's state after the call. */
  readonly state: ReceiptState;
  /** Set when recorded. */
  readonly receipt: RecordedReceipt | undefined;
}
