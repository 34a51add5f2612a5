import type { ReceiptRecord, SeqId } from "./model.ts";

/** At most this many ids travel in one receipt (MessageIdList's limit). */
export const MAX_RECEIPT_IDS = 1000;

/**
 * A user's watermark (delivered or read) after an acknowledgement. The watermark is the highest seq
 * such that every message up to it that was addressed to the user is acknowledged; messages the
 * user sent, messages addressed to none of the user's devices and expired messages count as
 * covered, so they never hold it back.
 *
 * @param current the watermark before the call
 * @param ackedUpTo the `up_to_seq` of the call, already clamped to `lastSeq` (0 when given by ids)
 * @param firstPendingAbove the lowest seq above max(current, ackedUpTo) still unacknowledged for
 *   the user after the call's own marks, or undefined when there is none
 * @param lastSeq the conversation's highest seq
 */
export function advanceWatermark(
  current: number,
  ackedUpTo: number,
  firstPendingAbove: number | undefined,
  lastSeq: number,
): number {
  const base = Math.max(current, Math.min(ackedUpTo, lastSeq));
  if (firstPendingAbove === undefined) return Math.max(base, lastSeq);
  return Math.max(base, firstPendingAbove - 1);
}

/**
 * Coalesces a receipt with the earlier one of the same reader and kind still in a device's inbox,
 * so a device that syncs late gets one receipt per reader and kind with everything it said: the
 * higher watermark and the ids above it (ids at or below the watermark say nothing more).
 */
export function mergeReceipt(previous: ReceiptRecord | undefined, next: ReceiptRecord): ReceiptRecord {
  const upToSeq = Math.max(previous?.upToSeq ?? 0, next.upToSeq);
  const byId = new Map<string, SeqId>();
  for (const id of [...(previous?.messageIds ?? []), ...next.messageIds]) {
    if (id.seq > upToSeq) byId.set(id.messageId, id);
  }
  const messageIds = [...byId.values()].sort((a, b) => a.seq - b.seq).slice(-MAX_RECEIPT_IDS);
  return { ...next, upToSeq, messageIds };
}

/** The key under which an inbox keeps one receipt per reader device and kind in a conversation. */
export function receiptKey(receipt: Pick<ReceiptRecord, "kind" | "reader">): string {
  return `${receipt.kind}/${receipt.reader.userId}/${receipt.reader.deviceId}`;
}

/**
 * Who a receipt is for: the senders of the messages it newly covers and, for read, the reader's
 * own user (so its other devices clear their unread state). Sorted, each once.
 */
export function notifyUserIds(
  kind: ReceiptRecord["kind"],
  readerUserId: string,
  newlyCoveredSenders: Iterable<string>,
): string[] {
  const users = new Set(newlyCoveredSenders);
  if (kind === "read") users.add(readerUserId);
  return [...users].sort();
}
