import { createHash } from "node:crypto";
import { invalidCursor } from "./errors.ts";
import type { DeviceRef } from "./model.ts";

/**
 * Inbox cursors (SyncRequest.cursor, SyncItem.cursor, StoredTarget.cursor): 17 opaque bytes
 *
 *   [0]     format version (1)
 *   [1..8]  device tag: the first 8 bytes of SHA-256("parley.history.cursor.v1" 0x00 user_id 0x00 device_id)
 *   [9..16] the item's position in the device's inbox, unsigned big-endian
 *
 * The tag binds a cursor to the device it was issued to, so another device's cursor is refused
 * (INVALID_CURSOR) instead of silently skipping or replaying items. It is not a secret: the edge
 * sets the device from the caller's token, so a cursor only ever positions a device in its own
 * inbox, and 64 bits are plenty to catch a cursor used by the wrong device. Clients must treat
 * cursors as opaque; a new layout takes a new version byte.
 */
export const CURSOR_VERSION = 1;
export const CURSOR_LENGTH = 17;

/** Tags of recently seen devices: a 5,000-device group message needs each tag again and again. */
const recentTags = new Map<string, Uint8Array>();
const RECENT_TAGS_MAX = 20_000;

/** The device's 8-byte tag (shared between calls: read it, never write it). */
export function deviceTag(device: DeviceRef): Uint8Array {
  const key = `${device.userId}\0${device.deviceId}`;
  let tag = recentTags.get(key);
  if (tag === undefined) {
    tag = new Uint8Array(
      createHash("sha256").update(`parley.history.cursor.v1\0${key}`, "utf8").digest().subarray(0, 8),
    );
    // Oldest first out (a Map iterates in insertion order): enough to keep a big group's devices.
    if (recentTags.size >= RECENT_TAGS_MAX) recentTags.delete(recentTags.keys().next().value as string);
    recentTags.set(key, tag);
  }
  return tag;
}

export function encodeCursor(device: DeviceRef, position: number): Uint8Array {
  if (!Number.isSafeInteger(position) || position < 0) throw new RangeError(`bad inbox position ${position}`);
  const cursor = new Uint8Array(CURSOR_LENGTH);
  cursor[0] = CURSOR_VERSION;
  cursor.set(deviceTag(device), 1);
  new DataView(cursor.buffer).setBigUint64(9, BigInt(position));
  return cursor;
}

/** The position a cursor points at: 0 for an empty cursor (the start of the inbox). */
export function decodeCursor(device: DeviceRef, cursor: Uint8Array): number {
  if (cursor.length === 0) return 0;
  if (cursor.length !== CURSOR_LENGTH || cursor[0] !== CURSOR_VERSION) throw invalidCursor("malformed");
  const tag = deviceTag(device);
  for (let i = 0; i < tag.length; i++) {
    if (cursor[i + 1] !== tag[i]) throw invalidCursor("issued to another device");
  }
  const position = new DataView(cursor.buffer, cursor.byteOffset, cursor.byteLength).getBigUint64(9);
  if (position > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidCursor("malformed");
  return Number(position);
}
