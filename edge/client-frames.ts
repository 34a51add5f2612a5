import http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema } from "../gen/parley/edge/v1/session_service_pb.ts";
import type { NodeRequest } from "./transport-scope.ts";

/**
 * Request content types whose client stream is binary protobuf in the 5-byte envelope (flags,
 * big-endian length) that gRPC and the Connect streaming protocol share.
 */
const ENVELOPED_PROTO = new Set(["application/grpc", "application/grpc+proto", "application/connect+proto"]);

/**
 * Request headers Connect checks on the first read of the client stream: a compression of the
 * client's messages (gRPC; Connect streams) and a timeout (an invalid one fails that read). A
 * request with one of them is left to Connect.
 */
const READ_TIME_HEADERS = ["grpc-encoding", "connect-content-encoding", "grpc-timeout", "connect-timeout-ms"];

const COMPRESSED_FLAG = 0b01;
const END_STREAM_FLAG = 0b10;

/**
 * A Session's client frames read straight from its HTTP/2 request, in place of the `requests`
 * Connect would hand the handler; undefined when Connect must read them (HTTP/1.1, a JSON codec, a
 * compressed client stream, a timeout header). direct-session.ts serves exactly the Sessions this
 * can read, with these frames; Connect serves the rest.
 *
 * Why: Connect passes each client message through a chain of async generators (the Node request,
 * envelope splitting, decompression, parsing), several promise turns per frame: ~6% of the
 * mesh's CPU while 5,000 devices acknowledge a group message (bench/README.md, "Session 7").
 *
 * How it stays equivalent: it parses the same envelopes and decodes each message with protobuf-es
 * as Connect's serializer does, treating the envelope flags as Connect does. What Connect would
 * raise while reading (a compressed envelope without a negotiated compression, a message that does
 * not decode, an envelope cut short by the end of the body, and, as the same RESOURCE_EXHAUSTED
 * ConnectError, an envelope announcing more than `readMaxBytes`) is thrown from `next()`, and the body
 * is read with the request's own async iterator, as Connect reads it, so a reset or an early close
 * ends the frames as it ends Connect's `requests`.
 * `client-frames.test.ts` reads the same client streams both ways, in a Connect handler that
 * leaves Connect's `requests` unread. No interceptor sees the frames: direct-session.ts runs none,
 * and none of the edge's would wrap a stream's requests (edge/interceptors.ts).
 */
export function directClientFrames(
  request: NodeRequest | undefined,
  readMaxBytes: number,
): AsyncIterable<SessionRequest> | undefined {
  if (!(request instanceof http2.Http2ServerRequest)) return undefined;
  const contentType = request.headers["content-type"];
  if (contentType === undefined || !ENVELOPED_PROTO.has(contentType)) return undefined;
  for (const name of READ_TIME_HEADERS) {
    const value = request.headers[name];
    if (value !== undefined && value !== "identity") return undefined;
  }
  const skipsEndStream = contentType === "application/connect+proto";
  return { [Symbol.asyncIterator]: () => readEnvelopes(request, skipsEndStream, readMaxBytes) };
}

/** A frame refused on its announced length: the error Connect gives, with the length to report. */
export class FrameTooLargeError extends ConnectError {
  readonly frameBytes: number;

  constructor(frameBytes: number, readMaxBytes: number) {
    super(
      `message size ${frameBytes} is larger than configured readMaxBytes ${readMaxBytes}`,
      Code.ResourceExhausted,
    );
    this.frameBytes = frameBytes;
  }
}

/**
 * The request's messages, read with the request's own async iterator as Connect reads it (so a
 * reset or an early close ends the same way): one generator between the body and the handler
 * instead of Connect's chain of them.
 */
async function* readEnvelopes(
  request: http2.Http2ServerRequest,
  skipsEndStream: boolean,
  readMaxBytes: number,
): AsyncGenerator<SessionRequest, void, undefined> {
  /** Bytes received and not parsed yet, in arrival order. */
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const received of request as AsyncIterable<Buffer>) {
    pending.push(received);
    pendingBytes += received.length;
    while (pendingBytes >= 5) {
      if ((pending[0] as Buffer).length < 5) pending = [Buffer.concat(pending, pendingBytes)];
      const first = pending[0] as Buffer;
      const flags = first[0] as number;
      const length = first.readUInt32BE(1);
      // Refused on its announced length, as Connect refuses it, before a byte of it is buffered.
      if (length > readMaxBytes) throw new FrameTooLargeError(length, readMaxBytes);
      if (pendingBytes < 5 + length) break;
      if (flags & COMPRESSED_FLAG) {
        throw new Error("protocol error: a compressed message, but the request names no compression");
      }
      // Joined only once the whole envelope is there, so a large message is copied once.
      const chunk = pending.length === 1 ? first : Buffer.concat(pending, pendingBytes);
      const rest = chunk.subarray(5 + length);
      pending = rest.length > 0 ? [rest] : [];
      pendingBytes = rest.length;
      // Connect skips an end-of-stream envelope from a client; gRPC has no such flag and, like
      // Connect for both, ignores the other bits.
      if (skipsEndStream && flags & END_STREAM_FLAG) continue;
      // A copy, as Connect makes: protobuf-es returns bytes fields as views of its input, and a
      // view of the chunk would pin a whole socket read (other streams' bytes too) for as long
      // as the frame's bytes live (a hello's resume cursor: the stream's life).
      yield fromBinary(SessionRequestSchema, new Uint8Array(chunk.subarray(5, 5 + length)));
    }
  }
  if (pendingBytes > 0) {
    throw new Error(`protocol error: the request ended within a message (${pendingBytes} bytes left)`);
  }
}
