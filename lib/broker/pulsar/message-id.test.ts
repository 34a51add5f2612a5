import { describe, expect, it } from "vitest";
import type { MessagePosition } from "./message-id.ts";
import {
  comparePositions,
  decodeMessageId,
  formatMessageId,
  isDeduplicatedReceipt,
  MessageIdFormatError,
} from "./message-id.ts";

/** A protobuf writer just big enough for MessageIdData, to build ids Pulsar would send. */
function varint(value: bigint): number[] {
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

function encode(fields: {
  ledger?: bigint;
  entry?: bigint;
  partition?: number;
  batch?: number;
  ackSet?: bigint[];
}) {
  const bytes: number[] = [];
  if (fields.ledger !== undefined) bytes.push(0x08, ...varint(fields.ledger));
  if (fields.entry !== undefined) bytes.push(0x10, ...varint(fields.entry));
  if (fields.partition !== undefined) bytes.push(0x18, ...varint(BigInt(fields.partition)));
  if (fields.batch !== undefined) bytes.push(0x20, ...varint(BigInt(fields.batch)));
  if (fields.ackSet !== undefined) {
    const packed = fields.ackSet.flatMap((word) => varint(word));
    bytes.push(0x2a, ...varint(BigInt(packed.length)), ...packed);
  }
  bytes.push(0x30, 0x00); // batch_size = 0, as Pulsar writes it
  return Buffer.from(bytes).toString("base64");
}

describe("Pulsar message ids", () => {
  it("decodes the ids the WebSocket API sends", () => {
    // Captured from Pulsar 4.0.7: a send receipt and a duplicate's receipt.
    expect(decodeMessageId("CAMQADAA")).toEqual({ ledgerId: 3n, entryId: 0n, batchIndex: -1 });
    const duplicate = decodeMessageId(
      Buffer.from("08ffffffffffffffffff0110ffffffffffffffffff013000", "hex").toString("base64"),
    );
    expect(isDeduplicatedReceipt(duplicate)).toBe(true);
    expect(isDeduplicatedReceipt(decodeMessageId("CAMQADAA"))).toBe(false);
  });

  it("reads 64-bit ledger and entry ids, negative partitions, batch indexes and skips fields it does not need", () => {
    const big = (1n << 63n) - 1n;
    const id = encode({ ledger: big, entry: big - 1n, partition: -1, batch: 41, ackSet: [-1n, 7n] });
    expect(decodeMessageId(id)).toEqual({ ledgerId: big, entryId: big - 1n, batchIndex: 41 });
    expect(decodeMessageId(encode({ ledger: 5n, entry: 6n, batch: -1 })).batchIndex).toBe(-1);
  });

  it("refuses ids that are truncated or lack a ledger or entry", () => {
    const full = Buffer.from(encode({ ledger: 300n, entry: 2n }), "base64");
    expect(() => decodeMessageId(full.subarray(0, 2).toString("base64"))).toThrow(MessageIdFormatError);
    expect(() => decodeMessageId(encode({ ledger: 1n }))).toThrow(MessageIdFormatError);
    expect(() => decodeMessageId(Buffer.from([0x0b]).toString("base64"))).toThrow(MessageIdFormatError);
  });

  it("formats ids of one width whose string order is the topic's order", () => {
    const positions: MessagePosition[] = [];
    for (let i = 0; i < 500; i++) {
      positions.push({
        ledgerId: BigInt(Math.floor(Math.random() * 5)) * 1_000_000_007n,
        entryId: BigInt(Math.floor(Math.random() * 3 ** (i % 30))),
        batchIndex: i % 3 === 0 ? -1 : Math.floor(Math.random() * 2_000),
      });
    }
    positions.push({ ledgerId: (1n << 64n) - 2n, entryId: (1n << 64n) - 2n, batchIndex: 2 ** 31 - 1 });
    const ids = positions.map(formatMessageId);
    expect(new Set(ids.map((id) => id.length)).size).toBe(1);
    const byPosition = [...positions].sort(comparePositions).map(formatMessageId);
    const byString = [...ids].sort();
    expect(byString).toEqual(byPosition);
    expect(formatMessageId({ ledgerId: 3n, entryId: 12n, batchIndex: -1 })).toBe(
      "00000000000000000003:00000000000000000012:0000000000",
    );
  });
});
