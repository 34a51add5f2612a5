import http2 from "node:http2";
import type { HandlerContext } from "@connectrpc/connect";
import type { ServerFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { encodeFrame, putVarint, varintSize } from "./frame-encoding.ts";
import type { NodeResponse } from "./transport-scope.ts";

/**
 * connectNodeAdapter's `compressMinBytes` for the edge (server.ts passes it): with a compression
 * negotiated, Connect compresses a response message of at least this many bytes. The frame writer
 * leaves such frames to Connect.
 */
export const COMPRESS_MIN_BYTES = 1024;

/**
 * Response content types whose messages are binary protobuf in the 5-byte envelope every one of
 * these protocols shares (flags, big-endian length): gRPC, gRPC-Web (binary) and the Connect
 * streaming protocol. Connect sets the response's content type before the handler runs; for
 * anything else (JSON codecs) the writer is not used.
 */
const ENVELOPED_PROTO = new Set([
  "application/grpc+proto",
  "application/grpc-web+proto",
  "application/connect+proto",
]);

/** Response headers that name a negotiated response compression (gRPC and gRPC-Web; Connect streams). */
const COMPRESSION_HEADERS = ["grpc-encoding", "connect-content-encoding"] as const;

/**
 * Writes a device stream's frames straight to its HTTP response, a batch of frames as one write,
 * with exactly the bytes Connect would have written for them one by one.
 *
 * Why: connect-node sends each message of a server stream through a chain of async iterables
 * (the handler's generator, each interceptor's, serialization, envelope, compression, join, the
 * Node writer), several promise turns and allocations per frame. That machinery cost more than the
 * rest of the push path together (bench/README.md, "The edge's push path").
 *
 * How it stays correct: Connect keeps owning the call (or direct-session.ts does, which writes
 * what Connect would at each of these points). It reads and authenticates the request,
 * picks the protocol, writes the response headers with the stream's first frame (the handler
 * yields that one to it), and writes the end (gRPC trailers, the Connect end-stream message,
 * gRPC-Web's trailer frame) after the handler returns or throws. In between, the handler calls
 * `write` with the frames of each batch: Connect's pipeline pulls the handler's next message only
 * after it wrote the previous one, so what the writer writes comes after everything Connect wrote
 * and before anything it writes later. Each frame is one message: `SessionResponse` and
 * `SubscribeResponse` are both `{ ServerFrame frame = 1; }`, so a message is the tag 0x0a, the
 * frame's length as a varint and the frame's encoding (the bytes protobuf-es writes, as Connect's
 * serializer does: frame-encoding.ts), in an envelope with flags 0. A frame Connect would compress
 * (a compression was negotiated and the message has at least COMPRESS_MIN_BYTES) is not written
 * here: `write` stops before it and the handler yields it to Connect, which compresses it as it
 * always does.
 */
export interface FrameWriter {
  /**
   * Writes `frames` from `start` as one chunk, up to the first frame Connect must write (returned
   * as `next`; `frames.length` when all were written). `drained` is set when the transport asked
   * to wait (HTTP/2 flow control, a full socket buffer): the caller waits for it before the next
   * write. `gone`: the response can take nothing more (the client went away).
   */
  write(frames: readonly ServerFrame[], start: number): WriteResult;
  /** Stops listening to the response's events. */
  release(): void;
}

export interface WriteResult {
  readonly next: number;
  readonly drained: Promise<void> | undefined;
  readonly gone: boolean;
}

/**
 * A stream's frames as a Connect handler's response messages: the first one through whoever
 * serves the call (Connect, or direct-session.ts), which sends the response headers with it;
 * after that each batch is one write straight to `response` (see FrameWriter), except frames
 * Connect must compress, which are yielded to it in their place in the order. Without a response
 * (or for a JSON codec) every frame is yielded.
 * `onGone` is called when the response can take no more (the client went away).
 */
export async function* serveFrames(
  batches: AsyncIterable<readonly ServerFrame[]>,
  ctx: HandlerContext,
  response: NodeResponse | undefined,
  onGone: () => void,
): AsyncGenerator<{ frame: ServerFrame }, void, undefined> {
  let writer: FrameWriter | undefined;
  let started = false;
  try {
    for await (const batch of batches) {
      let i = 0;
      if (!started && batch.length > 0) {
        yield { frame: batch[i++] as ServerFrame };
        started = true;
        writer = createFrameWriter(ctx, response);
      }
      if (writer === undefined) {
        while (i < batch.length) yield { frame: batch[i++] as ServerFrame };
        continue;
      }
      while (i < batch.length) {
        const written = writer.write(batch, i);
        if (written.gone) {
          onGone();
          break;
        }
        if (written.drained !== undefined) await written.drained;
        i = written.next;
        // A frame Connect must compress: it writes it, then the writer goes on after it.
        if (i < batch.length) yield { frame: batch[i++] as ServerFrame };
      }
    }
  } finally {
    writer?.release();
  }
}

/**
 * A frame writer for the call `ctx` is answered on by `response`, or undefined when frames must
 * go through Connect (no response, a JSON codec, headers not sent yet).
 */
export function createFrameWriter(
  ctx: HandlerContext,
  response: NodeResponse | undefined,
): FrameWriter | undefined {
  // The call's server (Connect, direct-session.ts) writes the headers with the first message; the
  // writer only ever follows it.
  if (response === undefined || !response.headersSent) return undefined;
  const contentType = ctx.responseHeader.get("content-type");
  if (contentType === null || !ENVELOPED_PROTO.has(contentType)) return undefined;
  const compressed = COMPRESSION_HEADERS.some((name) => {
    const value = ctx.responseHeader.get(name);
    return value !== null && value !== "identity";
  });
  let failed = false;
  // A write error would otherwise be an unhandled 'error' event; the stream ends anyway (its
  // client is gone), which the handler learns from `gone` and from the call's abort signal.
  const onError = () => {
    failed = true;
  };
  response.on("error", onError);
  const isGone = () => failed || responseGone(response);

  return {
    write(frames, start) {
      if (isGone()) return { next: frames.length, drained: undefined, gone: true };
      const bodies: Uint8Array[] = [];
      let size = 0;
      let next = start;
      for (; next < frames.length; next++) {
        const body = encodeFrame(frames[next] as ServerFrame);
        const message = 1 + varintSize(body.length) + body.length;
        if (compressed && message >= COMPRESS_MIN_BYTES) break;
        bodies.push(body);
        size += 5 + message;
      }
      if (bodies.length === 0) return { next, drained: undefined, gone: false };
      const chunk = Buffer.allocUnsafe(size);
      let at = 0;
      for (const body of bodies) at = putMessage(chunk, at, body);
      const flushed = response.write(chunk);
      return { next, drained: flushed ? undefined : drainOf(response, isGone), gone: false };
    },
    release() {
      response.off("error", onError);
    },
  };
}

/** Writes one envelope (flags 0, length, then `{ frame = 1: body }`) at `at`; returns the end. */
function putMessage(chunk: Buffer, at: number, body: Uint8Array): number {
  chunk[at] = 0;
  chunk.writeUInt32BE(1 + varintSize(body.length) + body.length, at + 1);
  chunk[at + 5] = 0x0a;
  const p = putVarint(chunk, at + 6, body.length);
  chunk.set(body, p);
  return p + body.length;
}

/** The response can take nothing more: its stream closed or was destroyed, or it ended. */
export function responseGone(response: NodeResponse): boolean {
  if (response instanceof http2.Http2ServerResponse) {
    return response.stream.destroyed || response.stream.closed || response.writableEnded;
  }
  return response.destroyed || response.writableEnded;
}

/** Resolves once the response drains, closes or fails. */
export function drainOf(response: NodeResponse, isGone: () => boolean): Promise<void> {
  if (isGone()) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      response.off("drain", done);
      response.off("close", done);
      response.off("error", done);
      resolve();
    };
    response.on("drain", done);
    response.on("close", done);
    response.on("error", done);
  });
}
