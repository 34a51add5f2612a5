/**
 * How the Cassandra history store turns its values into columns: numbers from bigint columns,
 * TTLs, and the JSON documents kept in text columns (a staged store step, a pending receipt,
 * an inbox receipt). Bytes travel as base64 inside JSON.
 */
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import type { StoreMessageInput } from "../../domain/history-store.ts";
import type { DeviceRef, ReceiptKind, ReceiptRecord } from "../../domain/model.ts";

/** Cassandra's largest TTL (20 years). */
const MAX_TTL_SECONDS = 630_720_000;

/** A bigint or int column as a number (Long from the driver; null as 0). */
export function toNumber(value: unknown): number {
  if (value === null || value === undefined) return 0;
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  return Number((value as { toNumber(): number }).toNumber());
}

/** A nullable bigint column: undefined when null. */
export function optionalNumber(value: unknown): number | undefined {
  return value === null || value === undefined ? undefined : toNumber(value);
}

export function optionalDate(value: unknown): Date | undefined {
  return value instanceof Date ? value : undefined;
}

/**
 * Seconds from `reference` (the time of the write, as the domain passed it) until `expiresAt`.
 * At least 1: a row already past its expiry is still written (reads hide it) and gone a second later.
 */
export function ttlSeconds(expiresAt: Date, reference: Date): number {
  const seconds = Math.ceil((expiresAt.getTime() - reference.getTime()) / 1000);
  return Math.min(MAX_TTL_SECONDS, Math.max(1, seconds));
}

/** A write timestamp (microseconds) equal to a time, for cells where the latest time must win. */
export function writeTimestamp(at: Date): number {
  return at.getTime() * 1000;
}

export function bytesOf(value: unknown): Uint8Array | undefined {
  return value instanceof Uint8Array ? new Uint8Array(value) : undefined;
}

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");
const unb64 = (text: string) => new Uint8Array(Buffer.from(text, "base64"));

interface DeviceJson {
  readonly u: string;
  readonly d: string;
}
const deviceJson = (device: DeviceRef): DeviceJson => ({ u: device.userId, d: device.deviceId });
const fromDeviceJson = (json: DeviceJson): DeviceRef => ({ userId: json.u, deviceId: json.d });

/** A store step's input, staged so another writer can finish the step. */
export function encodeStep(input: StoreMessageInput): string {
  const m = input.message;
  return JSON.stringify({
    message: {
      messageId: m.messageId,
      conversationId: m.conversationId,
      sender: deviceJson(m.sender),
      clientMessageId: m.clientMessageId,
      kind: m.kind,
      shared: m.sharedCiphertext === undefined ? null : b64(m.sharedCiphertext),
      acceptedAt: m.acceptedAt.getTime(),
      traceparent: m.traceparent,
      forceTrace: m.forceTrace,
    },
    targets: input.targets.map((t) => ({
      ...deviceJson(t.device),
      c: t.ciphertext === undefined ? null : b64(t.ciphertext),
    })),
    recipientUserIds: input.recipientUserIds,
    membershipVersion: input.membershipVersion.toString(),
    storedAt: input.storedAt.getTime(),
    expiresAt: input.expiresAt.getTime(),
  });
}

export function decodeStep(text: string): StoreMessageInput {
  const json = JSON.parse(text) as {
    message: {
      messageId: string;
      conversationId: string;
      sender: DeviceJson;
      clientMessageId: string;
      kind: number;
      shared: string | null;
      acceptedAt: number;
      traceparent: string;
      forceTrace: boolean;
    };
    targets: (DeviceJson & { c: string | null })[];
    recipientUserIds: string[];
    membershipVersion: string;
    storedAt: number;
    expiresAt: number;
  };
  const m = json.message;
  return {
    message: {
      messageId: m.messageId,
      conversationId: m.conversationId,
      seq: 0,
      sender: fromDeviceJson(m.sender),
      clientMessageId: m.clientMessageId,
      kind: m.kind,
      sharedCiphertext: m.shared === null ? undefined : unb64(m.shared),
      acceptedAt: new Date(m.acceptedAt),
      traceparent: m.traceparent,
      forceTrace: m.forceTrace,
    },
    targets: json.targets.map((t) => ({
      device: fromDeviceJson(t),
      ciphertext: t.c === null ? undefined : unb64(t.c),
    })),
    recipientUserIds: json.recipientUserIds,
    membershipVersion: BigInt(json.membershipVersion),
    storedAt: new Date(json.storedAt),
    expiresAt: new Date(json.expiresAt),
  };
}

interface ReceiptJson {
  readonly c: string;
  readonly u: string;
  readonly d: string;
  readonly k: ReceiptKind;
  readonly s: number;
  readonly i: [string, number][];
  readonly a: number;
}

const receiptJson = (receipt: ReceiptRecord): ReceiptJson => ({
  c: receipt.conversationId,
  u: receipt.reader.userId,
  d: receipt.reader.deviceId,
  k: receipt.kind,
  s: receipt.upToSeq,
  i: receipt.messageIds.map((id) => [id.messageId, id.seq]),
  a: receipt.at.getTime(),
});

const fromReceiptJson = (r: ReceiptJson): ReceiptRecord => ({
  conversationId: r.c,
  reader: { userId: r.u, deviceId: r.d },
  kind: r.k,
  upToSeq: r.s,
  messageIds: r.i.map(([messageId, seq]) => ({ messageId, seq })),
  at: new Date(r.a),
});

/** An inbox receipt item (times in unix ms). */
export function encodeReceipt(receipt: ReceiptRecord): string {
  return JSON.stringify(receiptJson(receipt));
}

export function decodeReceipt(text: string): ReceiptRecord {
  return fromReceiptJson(JSON.parse(text) as ReceiptJson);
}

/** Which messages of the reader's user a recorded receipt marks, and which inbox items it clears. */
export type ReceiptMarks =
  /** Every addressed message with `after < seq <= upTo`. */
  | { readonly after: number; readonly upTo: number }
  /** These seqs (the retained messages of the conversation among the ids given). */
  | { readonly seqs: readonly number[] };

/**
 * A recorded receipt whose effects are under way, kept on the member's receipt state row. Its
 * effects are idempotent, and recomputing the marks gives the same rows: only receipts of the same
 * member change them, and the next one waits until this one is finished.
 */
export interface PendingReceipt {
  readonly version: number;
  readonly conversationId: string;
  readonly reader: DeviceRef;
  readonly kind: ReceiptKind;
  readonly at: Date;
  readonly now: Date;
  readonly marks: ReceiptMarks;
  /** The reader device's inbox items to clear: seqs up to this, or these seqs. */
  readonly clear: { readonly upToSeq: number } | { readonly seqs: readonly number[] };
  readonly receipt: ReceiptRecord;
  readonly notifyUserIds: readonly string[];
  readonly event: OutboxEvent | undefined;
  readonly receiptExpiresAt: Date;
  readonly devicesSeenSince: Date;
}

export function encodePendingReceipt(p: PendingReceipt): string {
  return JSON.stringify({
    v: p.version,
    c: p.conversationId,
    r: deviceJson(p.reader),
    k: p.kind,
    at: p.at.getTime(),
    now: p.now.getTime(),
    marks: p.marks,
    clear: p.clear,
    receipt: receiptJson(p.receipt),
    notify: p.notifyUserIds,
    event:
      p.event === undefined
        ? null
        : {
            topic: p.event.topic,
            key: p.event.key,
            payload: b64(p.event.payload),
            properties: p.event.properties ?? {},
          },
    expiresAt: p.receiptExpiresAt.getTime(),
    seenSince: p.devicesSeenSince.getTime(),
  });
}

export function decodePendingReceipt(text: string): PendingReceipt {
  const j = JSON.parse(text) as {
    v: number;
    c: string;
    r: DeviceJson;
    k: ReceiptKind;
    at: number;
    now: number;
    marks: ReceiptMarks;
    clear: PendingReceipt["clear"];
    receipt: ReceiptJson;
    notify: string[];
    event: { topic: string; key: string; payload: string; properties: Record<string, string> } | null;
    expiresAt: number;
    seenSince: number;
  };
  return {
    version: j.v,
    conversationId: j.c,
    reader: fromDeviceJson(j.r),
    kind: j.k,
    at: new Date(j.at),
    now: new Date(j.now),
    marks: j.marks,
    clear: j.clear,
    receipt: fromReceiptJson(j.receipt),
    notifyUserIds: j.notify,
    event:
      j.event === null
        ? undefined
        : {
            topic: j.event.topic,
            key: j.event.key,
            payload: unb64(j.event.payload),
            properties: j.event.properties,
          },
    receiptExpiresAt: new Date(j.expiresAt),
    devicesSeenSince: new Date(j.seenSince),
  };
}
