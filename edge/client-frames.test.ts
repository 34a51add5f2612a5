// The direct reader of a Session's client frames must give the handler what Connect's `requests`
// give it: the same frames in the same order, the same end (done, or a failure, with the call's
// signal aborted when the client reset its stream). A real connect-node server reads the same
// client streams both ways, over HTTP/2, for gRPC and the Connect protocol.

import { AsyncLocalStorage } from "node:async_hooks";
import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { directClientFrames } from "./client-frames.ts";
import type { EdgeHttpServer } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import type { NodeRequest } from "./transport-scope.ts";

interface Read {
  readonly direct: boolean;
  /** For each hello read: the byte length of the buffer under its resume cursor. */
  readonly cursorBuffers: number[];
  readonly frames: string[];
  readonly end: "done" | "failed" | "aborted";
}

/** The largest client frame either way reads (the edge's is 4 MiB). */
const READ_MAX_BYTES = 256 * 1024;

/** The Node request of the call being handled: what the direct reader reads. */
const requestOfCall = new AsyncLocalStorage<NodeRequest>();

/** What each call's handler read, by the x-call header. */
const reads = new Map<string, Read>();
const finished = new Map<string, () => void>();
/** The frames each call's handler has read so far. */
const progress = new Map<string, string[]>();

const routes = (router: ConnectRouter) =>
  router.service(SessionService, {
    // biome-ignore lint/correctness/useYield: the handler only reads; the stream ends OK
    async *session(requests, ctx) {
      const call = ctx.requestHeader.get("x-call") ?? "";
      const direct = ctx.requestHeader.get("x-direct") === "1";
      const source = direct ? directClientFrames(requestOfCall.getStore(), READ_MAX_BYTES) : requests;
      const frames: string[] = [];
      const cursorBuffers: number[] = [];
      progress.set(call, frames);
      let end: Read["end"] = "done";
      try {
        for await (const request of source ?? requests) {
          frames.push(label(request));
          const body = request.frame?.body;
          if (body?.case === "hello") cursorBuffers.push(body.value.resumeCursor.buffer.byteLength);
        }
      } catch {
        end = ctx.signal.aborted ? "aborted" : "failed";
      }
      reads.set(call, { direct: source !== requests && source !== undefined, frames, cursorBuffers, end });
      finished.get(call)?.();
    },
  });

function label(request: SessionRequest): string {
  const frame = request.frame;
  return `${frame?.frameId}:${frame?.body.case}`;
}

let server: EdgeHttpServer;
let url: string;

beforeAll(async () => {
  const adapter = connectNodeAdapter({ routes, readMaxBytes: READ_MAX_BYTES });
  server = await listenHttp((req, res) => requestOfCall.run(req, () => adapter(req, res)), "127.0.0.1", 0);
  url = `http://127.0.0.1:${server.port}`;
});
afterAll(async () => {
  await server.close(100);
});

const SESSION = "/parley.edge.v1.SessionService/Session";
const PROTOCOLS = {
  grpc: { "content-type": "application/grpc+proto", te: "trailers" },
  "grpc (no suffix)": { "content-type": "application/grpc", te: "trailers" },
  connect: { "content-type": "application/connect+proto", "connect-protocol-version": "1" },
} as const;

function envelope(message: Uint8Array, flags = 0): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

const ack = (frameId: number) =>
  toBinary(
    SessionRequestSchema,
    create(SessionRequestSchema, {
      frame: {
        frameId: BigInt(frameId),
        body: {
          case: "ack",
          value: {
            conversationId: "0190e8f4-1c7b-7000-8000-000000000001",
            kind: 1,
            target: { case: "upToSeq", value: BigInt(frameId) },
          },
        },
      },
    }),
  );
/** A send frame (id 7) of at least `bytes` bytes: it decodes, whatever its rules say of it. */
const sendOf = (bytes: number) =>
  toBinary(
    SessionRequestSchema,
    create(SessionRequestSchema, {
      frame: {
        frameId: 7n,
        body: {
          case: "send",
          value: {
            conversationId: "0190e8f4-1c7b-7000-8000-000000000001",
            clientMessageId: "x".repeat(bytes),
          },
        },
      },
    }),
  );
const heartbeat = (frameId: number) =>
  toBinary(
    SessionRequestSchema,
    create(SessionRequestSchema, {
      frame: { frameId: BigInt(frameId), body: { case: "heartbeat", value: {} } },
    }),
  );

/**
 * Sends `writes` (each written on its own turn) on a Session call, then ends the request (or
 * resets the stream, `reset`), and returns what the handler read.
 */
async function session(
  headers: Record<string, string>,
  writes: readonly Buffer[],
  options: { direct: boolean; reset?: boolean },
): Promise<Read> {
  const call = `${Math.random()}`;
  const read = new Promise<void>((resolve) => finished.set(call, resolve));
  const client = http2.connect(url);
  try {
    const stream = client.request({
      ":method": "POST",
      ":path": SESSION,
      ...headers,
      "x-call": call,
      "x-direct": options.direct ? "1" : "0",
    });
    stream.on("error", () => {});
    stream.resume();
    for (const chunk of writes) {
      stream.write(chunk);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    if (options.reset === true) {
      // Once the handler has every frame, so the reset is all that differs between the two reads.
      while ((progress.get(call)?.length ?? 0) < writes.length) {
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      stream.close(http2.constants.NGHTTP2_CANCEL);
    } else stream.end();
    await read;
    return reads.get(call) as Read;
  } finally {
    client.close();
  }
}

/** The same client stream read through Connect and directly. */
async function bothWays(
  headers: Record<string, string>,
  writes: readonly Buffer[],
  options: { reset?: boolean } = {},
): Promise<{ connect: Read; direct: Read }> {
  const connect = await session(headers, writes, { ...options, direct: false });
  const direct = await session(headers, writes, { ...options, direct: true });
  return { connect, direct };
}

const strip = (read: Read) => ({ frames: read.frames, end: read.end });

describe.each(Object.entries(PROTOCOLS))("client frames over %s", (_name, headers) => {
  it("are read directly, as Connect reads them, several per write", async () => {
    const { connect, direct } = await bothWays(headers, [
      Buffer.concat([envelope(ack(1)), envelope(heartbeat(2)), envelope(ack(3))]),
      envelope(ack(4)),
    ]);
    expect(direct.direct).toBe(true);
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(["1:ack", "2:heartbeat", "3:ack", "4:ack"]);
    expect(direct.end).toBe("done");
  });

  it("are read whole when cut anywhere, down to one byte per write", async () => {
    const bytes = Buffer.concat([envelope(ack(1)), envelope(heartbeat(2)), envelope(ack(3))]);
    const writes = [...bytes].map((byte) => Buffer.from([byte]));
    const { connect, direct } = await bothWays(headers, writes);
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(["1:ack", "2:heartbeat", "3:ack"]);
  });

  it("keep a frame larger than a DATA frame whole", async () => {
    const big = sendOf(200_000);
    const { connect, direct } = await bothWays(headers, [envelope(ack(1)), envelope(big), envelope(ack(2))]);
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(["1:ack", "7:send", "2:ack"]);
  });

  it.each([
    ["a compressed message without a compression", [envelope(ack(1)), envelope(gzipSync(ack(2)), 1)]],
    ["a message that does not decode", [envelope(ack(1)), envelope(Buffer.from([0x0f, 0xff, 0xff]))]],
    ["a request ending within a message", [envelope(ack(1)), envelope(ack(2)).subarray(0, 9)]],
    // One that decodes: without the size check it would be read like any other.
    ["a message larger than readMaxBytes", [envelope(ack(1)), envelope(sendOf(READ_MAX_BYTES))]],
  ])("fail after the frames before %s", async (_case, writes) => {
    const { connect, direct } = await bothWays(headers, writes);
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(["1:ack"]);
    expect(direct.end).toBe("failed");
  });

  it("treat the other envelope flags as Connect does", async () => {
    const { connect, direct } = await bothWays(headers, [
      envelope(ack(1), 0b10),
      envelope(ack(2), 0b100),
      envelope(ack(3), 0x80),
    ]);
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(
      headers["content-type"] === "application/connect+proto"
        ? ["2:ack", "3:ack"]
        : ["1:ack", "2:ack", "3:ack"],
    );
  });

  it("end as Connect's do when the client resets its stream", async () => {
    const { connect, direct } = await bothWays(headers, [envelope(ack(1)), envelope(ack(2))], {
      reset: true,
    });
    expect(strip(direct)).toEqual(strip(connect));
    expect(direct.frames).toEqual(["1:ack", "2:ack"]);
  });
});

describe("client frames read directly", () => {
  it("own their bytes, as Connect's do, instead of pinning the socket's chunk", async () => {
    const hello = toBinary(
      SessionRequestSchema,
      create(SessionRequestSchema, {
        frame: { frameId: 1n, body: { case: "hello", value: { resumeCursor: new Uint8Array(17).fill(9) } } },
      }),
    );
    const { connect, direct } = await bothWays(PROTOCOLS.grpc, [
      Buffer.concat([envelope(hello), envelope(ack(2))]),
    ]);
    expect(direct.direct).toBe(true);
    // The cursor lies in a copy of its own message, not in the chunk both messages came in.
    expect(direct.cursorBuffers).toEqual([hello.length]);
    expect(direct.cursorBuffers).toEqual(connect.cursorBuffers);
  });
});

describe("client frames Connect must read", () => {
  it.each([
    ["an invalid timeout", { "grpc-timeout": "bogus" }],
    ["a valid timeout", { "grpc-timeout": "10S" }],
    ["an explicit identity encoding", { "grpc-encoding": "identity" }],
  ])("with %s, as Connect would", async (_case, extra) => {
    const headers = { ...PROTOCOLS.grpc, ...extra };
    const { connect, direct } = await bothWays(headers, [envelope(ack(1))]);
    expect(strip(direct)).toEqual(strip(connect));
  });

  it("a compressed client stream goes through Connect", async () => {
    const headers = { ...PROTOCOLS.grpc, "grpc-encoding": "gzip" };
    const read = await session(headers, [envelope(gzipSync(ack(1)), 1)], { direct: true });
    expect(read.direct).toBe(false);
    expect(read.frames).toEqual(["1:ack"]);
  });
});
