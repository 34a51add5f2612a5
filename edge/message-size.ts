import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { toBinary } from "@bufbuild/protobuf";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema } from "../gen/parley/edge/v1/session_service_pb.ts";
import type { ParleyError } from "../lib/errors.ts";
import { resourceExhausted } from "../lib/errors.ts";
import { CLIENT_MESSAGE_MAX_BYTES } from "../lib/message-limits.ts";

/**
 * The contract's size limit on a client message counts its binary protobuf encoding, whatever
 * the wire carried: a JSON request (connect-web's default) is larger on the wire, so Connect's
 * `readMaxBytes` is only the bound on what is buffered, and the decoded message is measured here.
 * A direct Session (binary) was measured by its envelope already (client-frames.ts).
 */

/** RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE` for a message of `bytes` bytes encoded. */
function messageTooLarge(bytes: number): ParleyError {
  return resourceExhausted(
    "MESSAGE_TOO_LARGE",
    `this message takes ${bytes} bytes in the binary protobuf encoding, over the edge's limit of ${CLIENT_MESSAGE_MAX_BYTES} (4 MiB); it was not accepted`,
    { metadata: { bytes: String(bytes), limit: String(CLIENT_MESSAGE_MAX_BYTES) } },
  );
}

/** Throws `messageTooLarge` when a unary request's binary encoding is over the limit. */
export function checkRequestSize<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
  const bytes = toBinary(schema, message).length;
  if (bytes > CLIENT_MESSAGE_MAX_BYTES) throw messageTooLarge(bytes);
}

/**
 * Ciphertext bytes a send frame may hold before its exact size is worth measuring: the rest of a
 * send is bounded by its rules (at most 5,000 devices of ids under 64 characters: < 1 MiB).
 */
const SURELY_SMALL_BYTES = CLIENT_MESSAGE_MAX_BYTES / 2;

/**
 * The binary size of a Session frame when it may be over the limit, else undefined. Only a send
 * can come near 4 MiB (every other frame is bounded far below by its rules), and a send is
 * encoded again only when its ciphertexts alone take half the limit, so the common small send
 * costs a sum, not an encoding.
 */
export function oversizedFrameBytes(request: SessionRequest): number | undefined {
  const body = request.frame?.body;
  if (body?.case !== "send") return undefined;
  const payload = body.value.envelope?.payload;
  let ciphertext = 0;
  if (payload?.case === "shared") ciphertext = payload.value.ciphertext.length;
  else if (payload?.case === "perDevice") {
    for (const recipient of payload.value.recipients) {
      for (const device of recipient.devices) ciphertext += device.ciphertext.length;
    }
  }
  if (ciphertext <= SURELY_SMALL_BYTES) return undefined;
  const bytes = toBinary(SessionRequestSchema, request).length;
  return bytes > CLIENT_MESSAGE_MAX_BYTES ? bytes : undefined;
}
