/** The history service's domain types: what the store keeps and the use cases return. */

/** One device of one user: the unit that owns an inbox. */
export interface DeviceRef {
  readonly userId: string;
  readonly deviceId: string;
}

export type ReceiptKind = "delivered" | "read";

export type SeqOrder = "newest_first" | "oldest_first";

/** A message as history stores it once per conversation (without any device's pairwise ciphertext). */
export interface StoredMessage {
  readonly messageId: string;
  readonly conversationId: string;
  /** Contiguous per conversation, from 1; never reused, also after the message expires. */
  readonly seq: number;
  readonly sender: DeviceRef;
  readonly clientMessageId: string;
  /** parley.common.v1.ContentKind, as a number (the server routes on it, never reads the content). */
  readonly kind: number;
  /** The group's shared ciphertext; undefined for a pairwise message. */
  readonly sharedCiphertext: Uint8Array | undefined;
  readonly acceptedAt: Date;
  readonly traceparent: string;
  readonly forceTrace: boolean;
}

/** A stored message as one device receives it: with its own ciphertext (or the shared one). */
export interface DeviceMessage extends StoredMessage {
  /** The shared ciphertext, the device's pairwise one, or empty when the device has none. */
  readonly ciphertext: Uint8Array;
}

/** A message id with its seq (receipts given by id keep the seq so coalescing can prune them). */
export interface SeqId {
  readonly messageId: string;
  readonly seq: number;
}

/** A delivered or read receipt as it is recorded, published and placed in inboxes. */
export interface ReceiptRecord {
  readonly conversationId: string;
  readonly reader: DeviceRef;
  readonly kind: ReceiptKind;
  /** The reader user's watermark of this kind after the receipt: every message up to it is covered. */
  readonly upToSeq: number;
  /** The messages the receipt newly covered when it was given by id (empty when given by seq). */
  readonly messageIds: readonly SeqId[];
  /** When the reader's device recorded it. */
  readonly at: Date;
}

/** How far one user got in one conversation, over all of the user's devices. */
export interface ReceiptState {
  readonly deliveredUpToSeq: number;
  readonly readUpToSeq: number;
}

/** A user's receipt state with the times its watermarks last moved. */
export interface MemberReceiptState extends ReceiptState {
  readonly userId: string;
  readonly deliveredMovedAt: Date | undefined;
  readonly readMovedAt: Date | undefined;
}

/** When one recipient user first got and first read one message. */
export interface MessageRecipientState {
  readonly userId: string;
  readonly deliveredAt: Date | undefined;
  readonly readAt: Date | undefined;
}

/** One entry of a device's inbox. */
export type InboxItem =
  | { readonly kind: "message"; readonly position: number; readonly message: DeviceMessage }
  | { readonly kind: "receipt"; readonly position: number; readonly receipt: ReceiptRecord };

export const EMPTY_STATE: ReceiptState = { deliveredUpToSeq: 0, readUpToSeq: 0 };

export function sameDevice(a: DeviceRef, b: DeviceRef): boolean {
  return a.userId === b.userId && a.deviceId === b.deviceId;
}
