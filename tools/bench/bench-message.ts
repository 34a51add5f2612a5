import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import type { MessageSchema } from "../../gen/parley/common/v1/message_pb.ts";
import type { ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { ServerFrameSchema } from "../../gen/parley/edge/v1/frames_pb.ts";
import type { SessionResponseSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { SessionResponseSchema as ResponseSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { STAMP_BYTES, stampPayload } from "./stamp.ts";

// The message every target pushes, shaped like a real one (ids, seq, sender, timestamp, cursor),
// so raw, relay and Parley put the same bytes on the wire.

export const BENCH_CONVERSATION = "0190a6d4-0000-7000-8000-00000000be0c";
export const BENCH_SENDER = { userId: "bench-sender", deviceId: "phone" } as const;
/** Parley's inbox cursors are about this long. */
export const CURSOR_BYTES = 24;
const cursor = new Uint8Array(CURSOR_BYTES).fill(7);

/** A benchmark message as a protobuf init shape (what the relay yields and Parley's driver pushes). */
export function benchMessage(
  seq: number,
  target: number,
  payloadBytes: number,
  messageId: string,
): MessageInitShape<typeof MessageSchema> {
  return {
    messageId,
    conversationId: BENCH_CONVERSATION,
    seq: BigInt(seq + 1),
    sender: BENCH_SENDER,
    clientMessageId: messageId,
    kind: ContentKind.TEXT,
    ciphertext: stampPayload(seq, target, payloadBytes),
    acceptedAt: timestampFromMs(Date.now()),
  };
}

export function benchFrame(seq: number, target: number, payloadBytes: number, messageId: string) {
  return {
    frame: {
      body: {
        case: "message" as const,
        value: { message: benchMessage(seq, target, payloadBytes, messageId), cursor },
      },
    },
  } satisfies MessageInitShape<typeof SessionResponseSchema>;
}

/** The first frame a baseline writes on a new stream, as Parley's ServerReady would be. */
export function readyFrame(hostId: string): ServerFrame {
  return create(ServerFrameSchema, {
    body: { case: "ready", value: { hostId, serverTime: timestampFromMs(Date.now()) } },
  });
}

/** `SessionResponse` bytes in a gRPC length-prefixed frame (flag 0, big-endian length). */
export function grpcFrame(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = 0;
  out.writeUInt32BE(body.length, 1);
  out.set(body, 5);
  return out;
}

/**
 * A pre-encoded message frame and where its stamp sits, so the raw baseline writes a message by
 * copying the template and patching 16 bytes: no protobuf library on its hot path.
 */
export function messageTemplate(payloadBytes: number): {
  readonly bytes: Buffer;
  readonly stampOffset: number;
} {
  const response = create(ResponseSchema, benchFrame(0, 0, payloadBytes, crypto.randomUUID()));
  const marker = new Uint8Array(STAMP_BYTES).fill(0xa5);
  const message = response.frame?.body.case === "message" ? response.frame.body.value.message : undefined;
  if (message === undefined) throw new Error("template without a message");
  message.ciphertext.set(marker, 0);
  const bytes = grpcFrame(toBinary(ResponseSchema, response));
  const stampOffset = bytes.indexOf(Buffer.from(marker));
  if (stampOffset < 0) throw new Error("stamp marker not found in the template");
  return { bytes, stampOffset };
}
