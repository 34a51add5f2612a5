// The recorded history of a fault run: what the server acknowledged to senders, what each device's
// app handler displayed, the receipts senders saw, and what history stores in the end. The checker
// (checker.ts) reads only this, so it can be unit-tested on synthetic histories.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { GapEvent, IncomingMessage } from "../../../clients/ts/index.ts";
import type { Message, Receipt } from "../../../gen/parley/common/v1/message_pb.ts";
import { ReceiptKind } from "../../../gen/parley/common/v1/message_pb.ts";

/** `user/device`. */
export type DeviceKey = string;

export const deviceKey = (userId: string, deviceId: string): DeviceKey => `${userId}/${deviceId}`;

export interface ConversationRecord {
  readonly conversationId: string;
  readonly kind: "direct" | "group";
  /**
   * Every device of every member for the whole run: each is a target of every message of the
   * conversation except the ones it sent itself.
   */
  readonly devices: readonly DeviceKey[];
}

/** One call of the app's send (the SDK retries inside it; the app may call again with the same id). */
export interface SendAttempt {
  /** Position in the run's event order when the call was made. */
  readonly startedAt: number;
  /** Position in the run's event order when it returned. */
  readonly at: number;
  /** Set when the server accepted: the message id it answered. */
  readonly messageId?: string;
  readonly duplicate?: boolean;
  /** Set when the call failed for good (the SDK gave up): the error's code and reason. */
  readonly error?: string;
}

export interface SendRecord {
  readonly sender: DeviceKey;
  readonly conversationId: string;
  readonly clientMessageId: string;
  readonly attempts: SendAttempt[];
}

/** A message a device's app handler was given (after the SDK's dedup and ordering). */
export interface DisplayRecord {
  readonly at: number;
  readonly device: DeviceKey;
  readonly conversationId: string;
  readonly messageId: string;
  readonly seq: bigint;
  readonly sender: DeviceKey;
  readonly clientMessageId: string;
  readonly source: string;
  readonly outOfOrder: boolean;
}

/** A receipt a device was pushed: `reader` says it has the conversation's messages up to `upToSeq`. */
export interface ReceiptRecord {
  readonly at: number;
  readonly observer: DeviceKey;
  readonly conversationId: string;
  readonly reader: DeviceKey;
  readonly kind: "delivered" | "read";
  readonly upToSeq: bigint;
  readonly messageIds: readonly string[];
}

/** A message as history stores it (ListMessages at the end of the run): the conversation's seq. */
export interface StoredRecord {
  readonly messageId: string;
  readonly seq: bigint;
  readonly sender: DeviceKey;
  readonly clientMessageId: string;
}

export interface GapRecord {
  readonly at: number;
  readonly device: DeviceKey;
  readonly conversationId: string;
  readonly fromSeq: bigint;
  readonly toSeq: bigint;
  readonly reason: string;
}

export interface FaultHistory {
  readonly conversations: readonly ConversationRecord[];
  readonly sends: readonly SendRecord[];
  readonly displays: readonly DisplayRecord[];
  readonly receipts: readonly ReceiptRecord[];
  /** Conversation id -> its stored messages, for the conversations that were read back. */
  readonly stored: Readonly<Record<string, readonly StoredRecord[]>>;
  /** Seqs the SDK passed over (reported by onGap): explains a missing message, never excuses it. */
  readonly gaps: readonly GapRecord[];
  /** What the scenario did and when (kills, restarts, cuts): event order and ms since the recorder started. */
  readonly notes: readonly { readonly at: number; readonly ms: number; readonly text: string }[];
}

export interface Recorder {
  conversation(record: ConversationRecord): void;
  /** The app is about to send `clientMessageId` (again, if it was sent before). */
  send(sender: DeviceKey, conversationId: string, clientMessageId: string): SendRecord;
  /** A position in the event order (before a send call: pass it to accepted/failed). */
  tick(): number;
  accepted(record: SendRecord, startedAt: number, messageId: string, duplicate: boolean): void;
  failed(record: SendRecord, startedAt: number, error: string): void;
  display(device: DeviceKey, incoming: IncomingMessage): void;
  receipt(observer: DeviceKey, receipt: Receipt): void;
  gap(device: DeviceKey, gap: GapEvent): void;
  stored(conversationId: string, messages: readonly Message[]): void;
  note(text: string): void;
  /** The history so far (the arrays are the recorder's own: read, do not change). */
  history(): FaultHistory;
  /** Sends whose last attempt was accepted. */
  acked(): SendRecord[];
}

export function createRecorder(): Recorder {
  let clock = 0;
  const tick = () => ++clock;
  const conversations: ConversationRecord[] = [];
  const sends = new Map<string, SendRecord>();
  const displays: DisplayRecord[] = [];
  const receipts: ReceiptRecord[] = [];
  const stored: Record<string, StoredRecord[]> = {};
  const gaps: GapRecord[] = [];
  const notes: { at: number; ms: number; text: string }[] = [];
  const createdAt = Date.now();
  const keyOf = (sender: DeviceKey, clientMessageId: string) => `${sender}|${clientMessageId}`;
  return {
    conversation(record) {
      conversations.push(record);
    },
    send(sender, conversationId, clientMessageId) {
      const key = keyOf(sender, clientMessageId);
      let record = sends.get(key);
      if (record === undefined) {
        record = { sender, conversationId, clientMessageId, attempts: [] };
        sends.set(key, record);
      }
      return record;
    },
    tick,
    accepted(record, startedAt, messageId, duplicate) {
      record.attempts.push({ startedAt, at: tick(), messageId, duplicate });
    },
    failed(record, startedAt, error) {
      record.attempts.push({ startedAt, at: tick(), error });
    },
    display(device, incoming) {
      const { message } = incoming;
      displays.push({
        at: tick(),
        device,
        conversationId: message.conversationId,
        messageId: message.messageId,
        seq: message.seq,
        sender: deviceKey(message.sender?.userId ?? "", message.sender?.deviceId ?? ""),
        clientMessageId: message.clientMessageId,
        source: incoming.source,
        outOfOrder: incoming.outOfOrder,
      });
    },
    receipt(observer, receipt) {
      receipts.push({
        at: tick(),
        observer,
        conversationId: receipt.conversationId,
        reader: deviceKey(receipt.reader?.userId ?? "", receipt.reader?.deviceId ?? ""),
        kind: receipt.kind === ReceiptKind.READ ? "read" : "delivered",
        upToSeq: receipt.upToSeq,
        messageIds: [...receipt.messageIds],
      });
    },
    gap(device, gap) {
      gaps.push({ at: tick(), device, ...gap });
    },
    stored(conversationId, messages) {
      stored[conversationId] = messages.map((m) => ({
        messageId: m.messageId,
        seq: m.seq,
        sender: deviceKey(m.sender?.userId ?? "", m.sender?.deviceId ?? ""),
        clientMessageId: m.clientMessageId,
      }));
    },
    note(text) {
      notes.push({ at: tick(), ms: Date.now() - createdAt, text });
    },
    history() {
      return { conversations, sends: [...sends.values()], displays, receipts, stored, gaps, notes };
    },
    acked() {
      return [...sends.values()].filter((s) => s.attempts.at(-1)?.messageId !== undefined);
    },
  };
}

/** Writes the history as JSON (bigints as strings) into `dir`, for a failed run's post-mortem. */
export function saveHistory(history: FaultHistory, dir: string, name: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify(history, (_, value: unknown) => (typeof value === "bigint" ? value.toString() : value), 1),
  );
  return file;
}
