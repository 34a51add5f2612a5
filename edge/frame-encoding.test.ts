// The hand encoder of message frames must write exactly the bytes protobuf-es writes.
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { DeviceAddressSchema } from "../gen/parley/common/v1/address_pb.ts";
import type { ContentKind } from "../gen/parley/common/v1/envelope_pb.ts";
import { MessageSchema, ReceiptSchema } from "../gen/parley/common/v1/message_pb.ts";
import type { ServerFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { ServerFrameSchema, ServerMessageSchema } from "../gen/parley/edge/v1/frames_pb.ts";
import { encodeFrame, putVarint, varintSize } from "./frame-encoding.ts";
import { messageFrame, receiptFrame } from "./streams/push-frames.ts";

type MessageInit = MessageInitShape<typeof MessageSchema>;

const UUID = "0190e8f4-1c7b-7000-8000-00000000c0c0";

function both(frame: ServerFrame) {
  return {
    hand: Buffer.from(encodeFrame(frame)),
    protobufEs: Buffer.from(toBinary(ServerFrameSchema, frame)),
  };
}

function expectSame(frame: ServerFrame) {
  const { hand, protobufEs } = both(frame);
  expect(hand.toString("hex")).toBe(protobufEs.toString("hex"));
}

const full: MessageInit = {
  messageId: UUID,
  conversationId: UUID,
  seq: 42n,
  sender: { userId: "bob", deviceId: "phone" },
  clientMessageId: UUID,
  kind: 1,
  ciphertext: new Uint8Array(300).map((_, i) => i & 0xff),
  sharedPayload: true,
  acceptedAt: { seconds: 1_800_000_000n, nanos: 123_456_789 },
};

describe("encodeFrame", () => {
  it("writes a message frame as protobuf-es does", () => {
    expectSame(messageFrame(create(MessageSchema, full), new Uint8Array(24).fill(7)));
  });

  it.each<[string, MessageInit, Uint8Array?]>([
    ["an empty message", {}],
    ["no cursor", full, new Uint8Array()],
    [
      "zero values skipped",
      { ...full, seq: 0n, kind: 0, sharedPayload: false, ciphertext: new Uint8Array() },
    ],
    ["an empty sender is still written", { ...full, sender: {} }],
    ["a timestamp at zero", { ...full, acceptedAt: { seconds: 0n, nanos: 0 } }],
    ["nanos only", { ...full, acceptedAt: { nanos: 5 } }],
    [
      "large numbers",
      {
        ...full,
        seq: BigInt(Number.MAX_SAFE_INTEGER),
        acceptedAt: { seconds: 2n ** 40n, nanos: 999_999_999 },
      },
    ],
    ["varint lengths of 2 and 3 bytes", { ...full, ciphertext: new Uint8Array(20_000) }],
    ["UTF-8 text", { ...full, sender: { userId: "zoë", deviceId: "téléphone 📱" }, messageId: "ünïcødé" }],
    ["a lone surrogate", { ...full, messageId: "a\ud800b" }],
    ["an unknown enum value", { ...full, kind: 77 as ContentKind }],
  ])("%s", (_name, init, cursor = new Uint8Array([1, 2, 3])) => {
    expectSame(messageFrame(create(MessageSchema, init), cursor));
  });

  it("leaves what it does not expect to protobuf-es", () => {
    const unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    const cases: ServerFrame[] = [
      messageFrame(create(MessageSchema, { ...full, $unknown: unknown } as MessageInit), new Uint8Array()),
      messageFrame(
        create(MessageSchema, {
          ...full,
          sender: create(DeviceAddressSchema, { userId: "a", $unknown: unknown } as never),
        }),
        new Uint8Array(),
      ),
      messageFrame(create(MessageSchema, { ...full, seq: 2n ** 63n }), new Uint8Array()),
      messageFrame(create(MessageSchema, { ...full, kind: -1 as ContentKind }), new Uint8Array()),
      messageFrame(
        create(MessageSchema, { ...full, acceptedAt: { seconds: -5n, nanos: 0 } }),
        new Uint8Array(),
      ),
      messageFrame(
        create(MessageSchema, {
          ...full,
          acceptedAt: create(TimestampSchema, { seconds: 1n, $unknown: unknown } as never),
        }),
        new Uint8Array(),
      ),
      create(ServerFrameSchema, { body: { case: "message", value: { cursor: new Uint8Array([1]) } } }),
      receiptFrame(create(ReceiptSchema, { conversationId: UUID, upToSeq: 3n, messageIds: [UUID] })),
    ];
    for (const frame of cases) expectSame(frame);
    expectSame(create(ServerFrameSchema, { body: { case: "ready", value: { hostId: "edge-1" } } }));
    expectSame(create(ServerFrameSchema, {}));
  });

  it("agrees with protobuf-es on random messages", () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed / 2_147_483_648;
    };
    const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)] as T;
    const texts = ["", "a", UUID, "é", "x".repeat(200), "日本"];
    for (let i = 0; i < 500; i++) {
      const init: MessageInit = {
        messageId: pick(texts),
        conversationId: pick(texts),
        seq: pick([0n, 1n, 127n, 128n, 16_383n, 16_384n, 2n ** 35n]),
        ...(random() < 0.5 ? {} : { sender: { userId: pick(texts), deviceId: pick(texts) } }),
        clientMessageId: pick(texts),
        kind: pick([0, 1, 2, 300]) as ContentKind,
        ciphertext: new Uint8Array(pick([0, 1, 127, 128, 4096])).fill(i & 0xff),
        sharedPayload: random() < 0.5,
        ...(random() < 0.3
          ? {}
          : { acceptedAt: { seconds: pick([0n, 1n, 1_800_000_000n]), nanos: pick([0, 1, 999_999_999]) } }),
      };
      expectSame(messageFrame(create(MessageSchema, init), new Uint8Array(pick([0, 24, 200]))));
    }
  });

  it("knows every field of the messages it encodes (fails when one gains a field)", () => {
    // If this fails, a field was added to a message encodeFrame writes by hand: teach it the field
    // (and the cases above), then update this list.
    const fields = (schema: DescMessage) => schema.fields.map((f) => `${f.number} ${f.name} ${f.fieldKind}`);
    expect(fields(MessageSchema)).toEqual([
      "1 message_id scalar",
      "2 conversation_id scalar",
      "3 seq scalar",
      "4 sender message",
      "5 client_message_id scalar",
      "6 kind enum",
      "7 ciphertext scalar",
      "8 shared_payload scalar",
      "9 accepted_at message",
    ]);
    expect(fields(DeviceAddressSchema)).toEqual(["1 user_id scalar", "2 device_id scalar"]);
    expect(fields(TimestampSchema)).toEqual(["1 seconds scalar", "2 nanos scalar"]);
    expect(fields(ServerMessageSchema)).toEqual(["1 message message", "2 cursor scalar"]);
    expect(ServerFrameSchema.fields.every((f) => f.oneof?.name === "body")).toBe(true);
    expect(ServerFrameSchema.field.message?.number).toBe(2);
  });

  it("writes varints as protobuf does", () => {
    for (const value of [
      0,
      1,
      127,
      128,
      300,
      16_383,
      16_384,
      2 ** 31,
      2 ** 32 + 5,
      Number.MAX_SAFE_INTEGER,
    ]) {
      const out = new Uint8Array(10);
      const end = putVarint(out, 0, value);
      expect(end).toBe(varintSize(value));
      const expected = toBinary(
        TimestampSchema,
        create(TimestampSchema, { seconds: BigInt(value) }),
      ).subarray(1);
      expect(Buffer.from(out.subarray(0, end)).toString("hex")).toBe(
        Buffer.from(value === 0 ? new Uint8Array([0]) : expected).toString("hex"),
      );
    }
  });
});
