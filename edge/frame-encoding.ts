import { toBinary } from "@bufbuild/protobuf";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import type { Message } from "../gen/parley/common/v1/message_pb.ts";
import type { ServerFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { ServerFrameSchema } from "../gen/parley/edge/v1/frames_pb.ts";

/**
 * A ServerFrame's protobuf encoding, exactly as protobuf-es's `toBinary(ServerFrameSchema, frame)`
 * writes it. Message frames, one per pushed message and device, are encoded here by hand:
 * `toBinary` took longer per message than the rest of the edge's work on it. Every other frame,
 * and a message frame with anything the hand encoder does not expect (unknown fields, values out
 * of the safe integer range, negative numbers), goes to `toBinary`. frame-encoding.test.ts checks
 * the two agree, and fails when one of the encoded messages gains a field.
 *
 * The hand encoder follows what protobuf-es does for proto3: fields in number order, a scalar only
 * when it is not its zero value, a message field whenever it is set (even empty), strings as
 * UTF-8, lengths and integers as varints.
 */
export function encodeFrame(frame: ServerFrame): Uint8Array {
  const body = frame.body;
  if (body.case !== "message" || hasUnknown(frame) || hasUnknown(body.value)) {
    return toBinary(ServerFrameSchema, frame);
  }
  const { message, cursor } = body.value;
  const messageSize = message === undefined ? 0 : sizeOfMessage(message);
  if (messageSize < 0) return toBinary(ServerFrameSchema, frame);
  // ServerMessage: message = 1, cursor = 2.
  const serverMessageSize =
    (message === undefined ? 0 : 1 + varintSize(messageSize) + messageSize) +
    (cursor.length === 0 ? 0 : 1 + varintSize(cursor.length) + cursor.length);
  // ServerFrame: message = 2.
  const out = Buffer.allocUnsafe(1 + varintSize(serverMessageSize) + serverMessageSize);
  let at = 0;
  out[at++] = 0x12;
  at = putVarint(out, at, serverMessageSize);
  if (message !== undefined) {
    out[at++] = 0x0a;
    at = putVarint(out, at, messageSize);
    at = putMessage(out, at, message);
  }
  if (cursor.length > 0) {
    out[at++] = 0x12;
    at = putVarint(out, at, cursor.length);
    out.set(cursor, at);
    at += cursor.length;
  }
  return out;
}

function hasUnknown(message: { readonly $unknown?: readonly unknown[] }): boolean {
  return message.$unknown !== undefined && message.$unknown.length > 0;
}

/**
 * Bytes of a parley.common.v1.Message, or -1 when the hand encoder leaves it to protobuf-es:
 * 1 message_id, 2 conversation_id, 3 seq (uint64), 4 sender (DeviceAddress), 5 client_message_id,
 * 6 kind (enum), 7 ciphertext, 8 shared_payload, 9 accepted_at (Timestamp).
 */
function sizeOfMessage(m: Message): number {
  if (hasUnknown(m)) return -1;
  let size = 0;
  size += stringField(m.messageId);
  size += stringField(m.conversationId);
  if (m.seq !== 0n) {
    if (m.seq < 0n || m.seq > MAX_SAFE) return -1;
    size += 1 + varintSize(Number(m.seq));
  }
  if (m.sender !== undefined) {
    const sender = sizeOfAddress(m.sender);
    if (sender < 0) return -1;
    size += 1 + varintSize(sender) + sender;
  }
  size += stringField(m.clientMessageId);
  if (m.kind !== 0) {
    if (!(m.kind > 0 && Number.isInteger(m.kind))) return -1;
    size += 1 + varintSize(m.kind);
  }
  if (m.ciphertext.length > 0) size += 1 + varintSize(m.ciphertext.length) + m.ciphertext.length;
  if (m.sharedPayload) size += 2;
  if (m.acceptedAt !== undefined) {
    const at = m.acceptedAt;
    if (
      hasUnknown(at) ||
      at.seconds < 0n ||
      at.seconds > MAX_SAFE ||
      at.nanos < 0 ||
      !Number.isInteger(at.nanos)
    ) {
      return -1;
    }
    const timestamp =
      (at.seconds === 0n ? 0 : 1 + varintSize(Number(at.seconds))) +
      (at.nanos === 0 ? 0 : 1 + varintSize(at.nanos));
    size += 1 + varintSize(timestamp) + timestamp;
  }
  return size;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function sizeOfAddress(a: DeviceAddress): number {
  if (hasUnknown(a)) return -1;
  return stringField(a.userId) + stringField(a.deviceId);
}

/** A string field's bytes (tag, length, UTF-8), 0 for the empty string. */
function stringField(value: string): number {
  if (value === "") return 0;
  const length = Buffer.byteLength(value, "utf8");
  return 1 + varintSize(length) + length;
}

function putMessage(out: Buffer, at: number, m: Message): number {
  at = putString(out, at, 0x0a, m.messageId);
  at = putString(out, at, 0x12, m.conversationId);
  if (m.seq !== 0n) {
    out[at++] = 0x18;
    at = putVarint(out, at, Number(m.seq));
  }
  if (m.sender !== undefined) {
    out[at++] = 0x22;
    at = putVarint(out, at, sizeOfAddress(m.sender));
    at = putString(out, at, 0x0a, m.sender.userId);
    at = putString(out, at, 0x12, m.sender.deviceId);
  }
  at = putString(out, at, 0x2a, m.clientMessageId);
  if (m.kind !== 0) {
    out[at++] = 0x30;
    at = putVarint(out, at, m.kind);
  }
  if (m.ciphertext.length > 0) {
    out[at++] = 0x3a;
    at = putVarint(out, at, m.ciphertext.length);
    out.set(m.ciphertext, at);
    at += m.ciphertext.length;
  }
  if (m.sharedPayload) {
    out[at++] = 0x40;
    out[at++] = 1;
  }
  if (m.acceptedAt !== undefined) {
    const { seconds, nanos } = m.acceptedAt;
    const timestamp =
      (seconds === 0n ? 0 : 1 + varintSize(Number(seconds))) + (nanos === 0 ? 0 : 1 + varintSize(nanos));
    out[at++] = 0x4a;
    at = putVarint(out, at, timestamp);
    if (seconds !== 0n) {
      out[at++] = 0x08;
      at = putVarint(out, at, Number(seconds));
    }
    if (nanos !== 0) {
      out[at++] = 0x10;
      at = putVarint(out, at, nanos);
    }
  }
  return at;
}

function putString(out: Buffer, at: number, tag: number, value: string): number {
  if (value === "") return at;
  const length = Buffer.byteLength(value, "utf8");
  out[at++] = tag;
  at = putVarint(out, at, length);
  return at + out.write(value, at, length, "utf8");
}

/** Bytes of a varint of a non-negative safe integer. */
export function varintSize(value: number): number {
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

/** Writes a non-negative safe integer as a varint at `at`; returns the end. */
export function putVarint(out: Uint8Array, at: number, value: number): number {
  while (value >= 0x80) {
    out[at++] = (value % 128) | 0x80;
    value = Math.floor(value / 128);
  }
  out[at++] = value;
  return at;
}
