import { describe, expect, it } from "vitest";
import type { ReceiptRecord } from "./model.ts";
import { advanceWatermark, MAX_RECEIPT_IDS, mergeReceipt, notifyUserIds } from "./receipts.ts";

describe("watermarks", () => {
  it("move to just below the first message still pending, never back", () => {
    expect(advanceWatermark(0, 0, 1, 10)).toBe(0);
    expect(advanceWatermark(0, 0, 4, 10)).toBe(3);
    expect(advanceWatermark(3, 6, 9, 10)).toBe(8);
    expect(advanceWatermark(5, 2, 4, 10)).toBe(5);
  });

  it("reach the last seq when nothing is pending, and an up_to_seq is clamped to it", () => {
    expect(advanceWatermark(2, 0, undefined, 7)).toBe(7);
    expect(advanceWatermark(0, 99, undefined, 7)).toBe(7);
    expect(advanceWatermark(0, 99, 8, 7)).toBe(7);
  });
});

describe("receipt coalescing", () => {
  const receipt = (upToSeq: number, seqs: number[], at = 1): ReceiptRecord => ({
    conversationId: "c",
    reader: { userId: "bob", deviceId: "phone" },
    kind: "read",
    upToSeq,
    messageIds: seqs.map((seq) => ({ messageId: `m${seq}`, seq })),
    at: new Date(at),
  });

  it("keeps the higher watermark and the ids above it, newest time", () => {
    const merged = mergeReceipt(receipt(3, [5, 7]), receipt(2, [9, 1], 2));
    expect(merged.upToSeq).toBe(3);
    expect(merged.messageIds.map((m) => m.seq)).toEqual([5, 7, 9]);
    expect(merged.at).toEqual(new Date(2));
    expect(mergeReceipt(receipt(3, [5, 7]), receipt(6, [8])).messageIds.map((m) => m.seq)).toEqual([7, 8]);
    expect(mergeReceipt(undefined, receipt(0, [2, 2])).messageIds.map((m) => m.seq)).toEqual([2]);
  });

  it("bounds the ids it carries, keeping the newest", () => {
    const many = Array.from({ length: MAX_RECEIPT_IDS + 10 }, (_, i) => i + 1);
    const merged = mergeReceipt(receipt(0, many.slice(0, 600)), receipt(0, many.slice(600)));
    expect(merged.messageIds).toHaveLength(MAX_RECEIPT_IDS);
    expect(merged.messageIds[0]?.seq).toBe(11);
  });

  it("notifies the senders and, for read, the reader's own user", () => {
    expect(notifyUserIds("read", "bob", ["carol", "alice", "carol"])).toEqual(["alice", "bob", "carol"]);
    expect(notifyUserIds("delivered", "bob", ["alice"])).toEqual(["alice"]);
    expect(notifyUserIds("delivered", "bob", [])).toEqual([]);
  });
});
