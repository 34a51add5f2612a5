import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ContentKind } from "../../../gen/parley/common/v1/envelope_pb.ts";
import type { Message, Receipt } from "../../../gen/parley/common/v1/message_pb.ts";
import { MessageSchema, ReceiptKind, ReceiptSchema } from "../../../gen/parley/common/v1/message_pb.ts";
import type { StoredTarget } from "../../../gen/parley/events/v1/message_events_pb.ts";
import {
  MessageStoredSchema,
  ResendRequestedSchema,
  StoredTargetSchema,
} from "../../../gen/parley/events/v1/message_events_pb.ts";
import { ReceiptRecordedSchema } from "../../../gen/parley/events/v1/receipt_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import type { OutboxEvent } from "../../../lib/outbox.ts";
import { encodeCursor } from "./cursor.ts";
import type { AssignedMessage, RecordedReceipt } from "./history-store.ts";
import type { DeviceRef, ReceiptRecord, StoredMessage } from "./model.ts";

/** MessageStored events stay under about 1 MiB each (message_events.proto); bigger ones are split. */
export const MESSAGE_STORED_MAX_BYTES = 1024 * 1024;

function properties(traceparent: string): Record<string, string> {
  return traceparent === "" ? {} : { traceparent };
}

/** A stored message as a device receives it (common.v1.Message). */
export function messageProto(message: StoredMessage, ciphertext: Uint8Array): Message {
  return create(MessageSchema, {
    messageId: message.messageId,
    conversationId: message.conversationId,
    seq: BigInt(message.seq),
    sender: { userId: message.sender.userId, deviceId: message.sender.deviceId },
    clientMessageId: message.clientMessageId,
    kind: message.kind as ContentKind,
    ciphertext,
    sharedPayload: message.sharedCiphertext !== undefined,
    acceptedAt: timestampFromDate(message.acceptedAt),
  });
}

export function receiptProto(receipt: ReceiptRecord): Receipt {
  return create(ReceiptSchema, {
    conversationId: receipt.conversationId,
    reader: { userId: receipt.reader.userId, deviceId: receipt.reader.deviceId },
    kind: receipt.kind === "read" ? ReceiptKind.READ : ReceiptKind.DELIVERED,
    upToSeq: BigInt(receipt.upToSeq),
    messageIds: receipt.messageIds.map((id) => id.messageId),
    at: timestampFromDate(receipt.at),
  });
}

/** Bytes a length-delimited field of `length` bytes takes in its parent: tag, length varint, body. */
function fieldSize(length: number): number {
  let varint = 1;
  for (let n = length; n >= 0x80; n >>>= 7) varint++;
  return 1 + varint + length;
}

/**
 * The MessageStored events of a stored message on `chat.deliveries` (key = conversation): one
 * event, or several `part`s with disjoint targets when one would pass `maxBytes`. The message is
 * the same in every part; it carries the shared ciphertext, and each target its own pairwise one
 * and its inbox cursor. Rebuilding from the same assignment gives the same events.
 */
export function messageStoredEvents(
  assigned: AssignedMessage,
  maxBytes: number = MESSAGE_STORED_MAX_BYTES,
): OutboxEvent[] {
  const { message } = assigned;
  const base = create(MessageStoredSchema, {
    message: messageProto(message, message.sharedCiphertext ?? new Uint8Array()),
    storedAt: timestampFromDate(assigned.storedAt),
    traceparent: message.traceparent,
    forceTrace: message.forceTrace,
  });
  // Room for `part` and `part_count` (each a tag and a varint below 5,000).
  const baseSize = toBinary(MessageStoredSchema, base).length + 8;
  const parts: StoredTarget[][] = [];
  let current: StoredTarget[] = [];
  let size = baseSize;
  for (const target of assigned.targets) {
    const stored = create(StoredTargetSchema, {
      device: { userId: target.device.userId, deviceId: target.device.deviceId },
      ciphertext: target.ciphertext ?? new Uint8Array(),
      cursor: encodeCursor(target.device, target.position),
    });
    const targetSize = fieldSize(toBinary(StoredTargetSchema, stored).length);
    if (current.length > 0 && size + targetSize > maxBytes) {
      parts.push(current);
      current = [];
      size = baseSize;
    }
    current.push(stored);
    size += targetSize;
  }
  if (current.length > 0) parts.push(current);
  return parts.map((targets, part) => ({
    topic: Topics.deliveries,
    key: message.conversationId,
    payload: toBinary(MessageStoredSchema, { ...base, targets, part, partCount: parts.length }),
    properties: properties(message.traceparent),
  }));
}

/**
 * ReceiptRecorded on `chat.receipts`, keyed by conversation and reader user: one reader's receipts
 * stay in order (read after delivered, up_to_seq rising), while a big group's thousands of readers
 * are pushed side by side instead of one after the other (a key is handled one event at a time).
 */
export function receiptRecordedEvent(
  recorded: RecordedReceipt,
  facts: { readonly eventId: string; readonly recordedAt: Date; readonly traceparent: string },
): OutboxEvent {
  const event = create(ReceiptRecordedSchema, {
    eventId: facts.eventId,
    receipt: receiptProto(recorded.receipt),
    notifyUserIds: [...recorded.notifyUserIds],
    recordedAt: timestampFromDate(facts.recordedAt),
    traceparent: facts.traceparent,
  });
  return {
    topic: Topics.receipts,
    key: receiptEventKey(recorded.receipt),
    payload: toBinary(ReceiptRecordedSchema, event),
    properties: properties(facts.traceparent),
  };
}

function receiptEventKey(receipt: Pick<ReceiptRecord, "conversationId" | "reader">): string {
  return `${receipt.conversationId}/${receipt.reader.userId}`;
}

/** ResendRequested on `chat.resends` (key = conversation). */
export function resendRequestedEvent(facts: {
  readonly eventId: string;
  readonly message: StoredMessage;
  readonly requester: DeviceRef;
  readonly identityKey: Uint8Array;
  readonly requestedAt: Date;
  readonly traceparent: string;
}): OutboxEvent {
  const event = create(ResendRequestedSchema, {
    eventId: facts.eventId,
    conversationId: facts.message.conversationId,
    messageId: facts.message.messageId,
    requester: { userId: facts.requester.userId, deviceId: facts.requester.deviceId },
    identityKey: facts.identityKey,
    sender: { userId: facts.message.sender.userId, deviceId: facts.message.sender.deviceId },
    requestedAt: timestampFromDate(facts.requestedAt),
    traceparent: facts.traceparent,
  });
  return {
    topic: Topics.resends,
    key: facts.message.conversationId,
    payload: toBinary(ResendRequestedSchema, event),
    properties: properties(facts.traceparent),
  };
}
