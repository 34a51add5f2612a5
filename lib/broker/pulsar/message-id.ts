/**
 * Pulsar message ids as the WebSocket API carries them (base64 of the protobuf `MessageIdData`),
 * and the port's form of them: fixed-width decimal, so that the ids of one persistent topic
 * compare as strings in publish order (ledger ids grow per topic, entry ids grow per ledger,
 * batch indexes grow per entry).
 */

/** Where a message sits in its topic. */
export interface MessagePosition {
  readonly ledgerId: bigint;
  readonly entryId: bigint;
  /** -1 for a message that is an entry of its own (not part of a batch). */
  readonly batchIndex: number;
}

/** `MessageIdData` fields (PulsarApi.proto); partition and chunk ids play no part in our ids. */
const LEDGER_ID_FIELD = 1;
const ENTRY_ID_FIELD = 2;
const BATCH_INDEX_FIELD = 4;

const UINT64_MAX = (1n << 64n) - 1n;
const LEDGER_DIGITS = 20;
const ENTRY_DIGITS = 20;
const BATCH_DIGITS = 10;

export class MessageIdFormatError extends Error {
  override readonly name = "MessageIdFormatError";
}

/** Reads one base-128 varint at `offset`; returns its value and the offset after it. */
function readVarint(bytes: Uint8Array, offset: number): [bigint, number] {
  let value = 0n;
  let shift = 0n;
  let at = offset;
  for (;;) {
    if (at >= bytes.length) throw new MessageIdFormatError("message id ends inside a varint");
    const byte = bytes[at++] as number;
    value |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [value & UINT64_MAX, at];
    shift += 7n;
    if (shift > 63n) throw new MessageIdFormatError("message id varint is longer than 64 bits");
  }
}

/** Decodes the base64 `MessageIdData` of the WebSocket API. */
export function decodeMessageId(base64: string): MessagePosition {
  const bytes = Buffer.from(base64, "base64");
  let ledgerId: bigint | undefined;
  let entryId: bigint | undefined;
  let batchIndex = -1;
  let at = 0;
  while (at < bytes.length) {
    const [tag, afterTag] = readVarint(bytes, at);
    at = afterTag;
    const field = Number(tag >> 3n);
    const wireType = Number(tag & 7n);
    if (wireType === 0) {
      const [value, next] = readVarint(bytes, at);
      at = next;
      if (field === LEDGER_ID_FIELD) ledgerId = value;
      else if (field === ENTRY_ID_FIELD) entryId = value;
      // int32 fields are sign-extended to 64 bits on the wire.
      else if (field === BATCH_INDEX_FIELD) batchIndex = Number(BigInt.asIntN(64, value));
    } else if (wireType === 1) {
      at += 8;
    } else if (wireType === 5) {
      at += 4;
    } else if (wireType === 2) {
      const [length, next] = readVarint(bytes, at);
      at = next + Number(length);
    } else {
      throw new MessageIdFormatError(`message id has an unsupported wire type ${wireType}`);
    }
    if (at > bytes.length) throw new MessageIdFormatError("message id is truncated");
  }
  if (ledgerId === undefined || entryId === undefined) {
    throw new MessageIdFormatError(`message id ${JSON.stringify(base64)} lacks a ledger or entry id`);
  }
  return { ledgerId, entryId, batchIndex };
}

/**
 * A send receipt for a message the broker dropped as a duplicate (deduplication by producer name and
 * sequence id) carries ledger and entry -1: the message is stored, but the receipt does not say where.
 */
export function isDeduplicatedReceipt(position: MessagePosition): boolean {
  return position.ledgerId === UINT64_MAX || position.entryId === UINT64_MAX;
}

/**
 * `ledger:entry:batch`, each zero-padded to a fixed width (a message outside a batch has batch 0: an
 * entry is either one message or one batch, so this never collides).
 */
export function formatMessageId(position: MessagePosition): string {
  return [
    position.ledgerId.toString().padStart(LEDGER_DIGITS, "0"),
    position.entryId.toString().padStart(ENTRY_DIGITS, "0"),
    Math.max(position.batchIndex, 0).toString().padStart(BATCH_DIGITS, "0"),
  ].join(":");
}

/** Orders positions as the topic does: negative when `a` comes first. */
export function comparePositions(a: MessagePosition, b: MessagePosition): number {
  if (a.ledgerId !== b.ledgerId) return a.ledgerId < b.ledgerId ? -1 : 1;
  if (a.entryId !== b.entryId) return a.entryId < b.entryId ? -1 : 1;
  return Math.sign(a.batchIndex - b.batchIndex);
}
