import { create, toBinary } from "@bufbuild/protobuf";
import { SessionRequestSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import type { OutgoingMessageInit } from "./outbound.ts";

/**
 * The largest client message the edge accepts: 4 MiB in the binary protobuf encoding, whatever
 * the transport's format (session_service.proto).
 */
export const CLIENT_MESSAGE_MAX_BYTES = 4 * 1024 * 1024;

/** The largest frame id: the send's frame is measured with it, so no stream's frame is larger. */
const MAX_FRAME_ID = 2n ** 64n - 1n;

/**
 * The bytes a send takes as the edge counts them: its Session frame in binary, the larger of its
 * two forms (the unary SendRequest wraps the same message in less).
 */
export function sendFrameBytes(message: OutgoingMessageInit): number {
  const request = create(SessionRequestSchema, {
    frame: { frameId: MAX_FRAME_ID, body: { case: "send", value: message } },
  });
  return toBinary(SessionRequestSchema, request).length;
}
