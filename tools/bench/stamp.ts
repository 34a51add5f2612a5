// What every benchmark message carries in its ciphertext so the receiving side can measure it
// without asking anyone: when it was sent, its sequence number in the run, and whom it was for.
// Parley never looks inside ciphertext, so the stamp crosses the whole pipeline untouched.

/** Bytes of the stamp at the start of a payload: float64 sent-at (ms), uint32 seq, uint32 target. */
export const STAMP_BYTES = 16;

/**
 * Milliseconds on a clock every process on this machine shares (wall-clock origin plus the
 * monotonic offset), so a stamp written in one process can be compared in another.
 */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface Stamp {
  readonly sentAt: number;
  readonly seq: number;
  readonly target: number;
}

/** A payload of `size` bytes (at least the stamp) that starts with the stamp. */
export function stampPayload(seq: number, target: number, size: number, sentAt = nowMs()): Uint8Array {
  const bytes = new Uint8Array(Math.max(STAMP_BYTES, size));
  writeStamp(bytes, 0, sentAt, seq, target);
  // Filler that does not compress to nothing, as real ciphertext would not.
  for (let i = STAMP_BYTES; i < bytes.length; i++) bytes[i] = (i * 131 + seq) & 0xff;
  return bytes;
}

export function writeStamp(bytes: Uint8Array, offset: number, sentAt: number, seq: number, target: number) {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, STAMP_BYTES);
  view.setFloat64(0, sentAt, true);
  view.setUint32(8, seq >>> 0, true);
  view.setUint32(12, target >>> 0, true);
}

/** The stamp at the start of `bytes`, or undefined when they are too short to hold one. */
export function readStamp(bytes: Uint8Array, offset = 0, length = bytes.length - offset): Stamp | undefined {
  if (length < STAMP_BYTES) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, STAMP_BYTES);
  return { sentAt: view.getFloat64(0, true), seq: view.getUint32(8, true), target: view.getUint32(12, true) };
}

/**
 * Where the ciphertext of a pushed message sits inside an encoded `SessionResponse`
 * (frame=1 -> ServerFrame.message=2 -> ServerMessage.message=1 -> Message.ciphertext=7), found by
 * walking the length-delimited fields without decoding anything else. The load generator reads
 * tens of thousands of frames a second on a shared core: a full decode of each would make the
 * client, not the server under test, the limit. Returns the frame's ServerFrame body field number
 * (2 for a message) and, for messages, where the ciphertext is.
 */
export function locateCiphertext(
  bytes: Uint8Array,
  start: number,
  end: number,
): { readonly body: number; readonly offset: number; readonly length: number } {
  const frame = field(bytes, start, end, 1);
  if (frame === undefined) return { body: 0, offset: 0, length: 0 };
  const body = firstField(bytes, frame.offset, frame.offset + frame.length);
  if (body !== 2) return { body, offset: 0, length: 0 };
  const serverMessage = field(bytes, frame.offset, frame.offset + frame.length, 2);
  if (serverMessage === undefined) return { body, offset: 0, length: 0 };
  const message = field(bytes, serverMessage.offset, serverMessage.offset + serverMessage.length, 1);
  if (message === undefined) return { body, offset: 0, length: 0 };
  const ciphertext = field(bytes, message.offset, message.offset + message.length, 7);
  return ciphertext === undefined ? { body, offset: 0, length: 0 } : { body, ...ciphertext };
}

/** The field number of the first field in [start, end), 0 when empty. */
function firstField(bytes: Uint8Array, start: number, end: number): number {
  if (start >= end) return 0;
  const [tag] = varint(bytes, start);
  return Math.floor(tag / 8);
}

/** The first length-delimited field `wanted` in [start, end): where its content is. */
function field(
  bytes: Uint8Array,
  start: number,
  end: number,
  wanted: number,
): { offset: number; length: number } | undefined {
  let pos = start;
  while (pos < end) {
    const [tag, afterTag] = varint(bytes, pos);
    const number = Math.floor(tag / 8);
    const wire = tag & 7;
    pos = afterTag;
    switch (wire) {
      case 0: {
        pos = varint(bytes, pos)[1];
        break;
      }
      case 1:
        pos += 8;
        break;
      case 2: {
        const [length, afterLength] = varint(bytes, pos);
        if (number === wanted) return { offset: afterLength, length };
        pos = afterLength + length;
        break;
      }
      case 5:
        pos += 4;
        break;
      default:
        return undefined;
    }
  }
  return undefined;
}

/** A varint at `pos` (values up to 2^53, plenty for tags and lengths): [value, next position]. */
function varint(bytes: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (;;) {
    const byte = bytes[pos++] ?? 0;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80 || pos >= bytes.length) return [value, pos];
    scale *= 128;
  }
}
