import { fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { MessageStoredSchema } from "../../../gen/parley/events/v1/message_events_pb.ts";
import { createParleyValidator } from "../../../lib/grpc/validation.ts";
import { decodeCursor } from "./cursor.ts";
import { MESSAGE_STORED_MAX_BYTES, messageStoredEvents, receiptRecordedEvent } from "./events.ts";
import type { AssignedMessage } from "./history-store.ts";

const validator = createParleyValidator();

function assigned(targets: number, ciphertextBytes: number | undefined): AssignedMessage {
  return {
    message: {
      messageId: "0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a9b",
      conversationId: "0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a00",
      seq: 7,
      sender: { userId: "alice", deviceId: "phone" },
      clientMessageId: "0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a01",
      kind: 1,
      sharedCiphertext: ciphertextBytes === undefined ? new Uint8Array(100) : undefined,
      acceptedAt: new Date("2030-01-01T00:00:00.000Z"),
      traceparent: "",
      forceTrace: true,
    },
    targets: Array.from({ length: targets }, (_, i) => ({
      device: { userId: `user${Math.floor(i / 5)}`, deviceId: `device${i % 5}` },
      ciphertext: ciphertextBytes === undefined ? undefined : new Uint8Array(ciphertextBytes).fill(i % 251),
      position: 1000 + i,
    })),
    storedAt: new Date("2030-01-01T00:00:01.000Z"),
  };
}

describe("MessageStored events", () => {
  it("fit a shared message for 5,000 devices in one valid event, each target with its own cursor", () => {
    const events = messageStoredEvents(assigned(5000, undefined));
    expect(events).toHaveLength(1);
    const event = fromBinary(MessageStoredSchema, events[0]?.payload ?? new Uint8Array());
    expect(validator.validate(MessageStoredSchema, event).kind).toBe("valid");
    expect([event.part, event.partCount, event.message?.seq, event.message?.sharedPayload]).toEqual([
      0,
      1,
      7n,
      true,
    ]);
    expect(event.targets).toHaveLength(5000);
    const last = event.targets[4999];
    expect(decodeCursor({ userId: "user999", deviceId: "device4" }, last?.cursor ?? new Uint8Array())).toBe(
      5999,
    );
    expect(events[0]?.key).toBe("0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a00");
    expect(events[0]?.topic).toBe("chat.deliveries");
  });

  it("split pairwise ciphertexts over parts of at most ~1 MiB with disjoint targets", () => {
    const input = assigned(1000, 4096);
    const events = messageStoredEvents(input);
    expect(events.length).toBeGreaterThan(1);
    const parts = events.map((e) => fromBinary(MessageStoredSchema, e.payload));
    for (const [i, part] of parts.entries()) {
      expect(events[i]?.payload.length).toBeLessThanOrEqual(MESSAGE_STORED_MAX_BYTES);
      expect([part.part, part.partCount]).toEqual([i, events.length]);
      expect(part.message?.ciphertext.length).toBe(0);
      expect(validator.validate(MessageStoredSchema, part).kind).toBe("valid");
    }
    const devices = parts.flatMap((p) => p.targets.map((t) => `${t.device?.userId}/${t.device?.deviceId}`));
    expect(devices).toEqual(input.targets.map((t) => `${t.device.userId}/${t.device.deviceId}`));
    expect(parts[0]?.targets[3]?.ciphertext).toEqual(new Uint8Array(4096).fill(3));
    // The same assignment gives the same events (a republish after a crash is identical).
    expect(messageStoredEvents(input).map((e) => e.payload)).toEqual(events.map((e) => e.payload));
  });

  it("publish nothing for a message with no target but its sender", () => {
    expect(messageStoredEvents(assigned(0, undefined))).toEqual([]);
  });
});

describe("ReceiptRecorded events", () => {
  it("are keyed by conversation and reader user: one reader's in order, readers side by side", () => {
    const event = (userId: string, deviceId: string, kind: "delivered" | "read") =>
      receiptRecordedEvent(
        {
          receipt: {
            conversationId: "0190e8f4-1c7b-7000-8000-00000000c0de",
            reader: { userId, deviceId },
            kind,
            upToSeq: 3,
            messageIds: [],
            at: new Date(0),
          },
          notifyUserIds: ["alice"],
        },
        { eventId: "0190e8f4-1c7b-7000-8000-0000000000e1", recordedAt: new Date(0), traceparent: "" },
      );
    const bobPhone = event("bob", "phone", "delivered");
    expect(bobPhone).toMatchObject({
      topic: "chat.receipts",
      key: "0190e8f4-1c7b-7000-8000-00000000c0de/bob",
    });
    expect(event("bob", "laptop", "read").key).toBe(bobPhone.key);
    expect(event("carol", "phone", "delivered").key).not.toBe(bobPhone.key);
  });
});
