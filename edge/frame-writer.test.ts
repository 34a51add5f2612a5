// The frame writer must put on the wire exactly what Connect would have written frame by frame:
// the same headers, the same bytes of every message (compressed ones included) and the same end
// (gRPC trailers, the Connect end-stream message, gRPC-Web's trailer frame), for every protocol
// and codec the edge serves, over HTTP/2 and HTTP/1.1. A real connect-node server answers the same
// scripted stream both ways and the raw responses are compared.
import http from "node:http";
import http2 from "node:http2";
import { gunzipSync } from "node:zlib";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ServerFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { CloseReason, ServerFrameSchema } from "../gen/parley/edge/v1/frames_pb.ts";
import { SessionResponseSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { COMPRESS_MIN_BYTES, serveFrames } from "./frame-writer.ts";
import type { EdgeHttpServer } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import { currentResponse, withTransportAbort } from "./transport-scope.ts";

const frame = (body: MessageInitShape<typeof ServerFrameSchema>["body"]) =>
  create(ServerFrameSchema, { body });

function messageFrame(seq: number, ciphertextBytes = 100): ServerFrame {
  return create(ServerFrameSchema, {
    body: {
      case: "message",
      value: {
        message: {
          messageId: `0190e8f4-1c7b-7000-8000-${seq.toString(16).padStart(12, "0")}`,
          seq: BigInt(seq),
          ciphertext: new Uint8Array(ciphertextBytes).map((_, i) => (i * 31 + seq) & 0xff),
        },
        cursor: new Uint8Array([1, 2, seq]),
      },
    },
  });
}

/** A message frame whose response message is exactly `size` bytes. */
function messageOfSize(seq: number, size: number): ServerFrame {
  const sizeOf = (f: ServerFrame) =>
    toBinary(SessionResponseSchema, create(SessionResponseSchema, { frame: f })).length;
  let ciphertext = size;
  while (sizeOf(messageFrame(seq, ciphertext)) > size) ciphertext--;
  const found = messageFrame(seq, ciphertext);
  if (sizeOf(found) !== size) throw new Error(`no message of ${size} bytes`);
  return found;
}

/**
 * The scripted stream: several batches, one message just big enough to be compressed (when a
 * compression was negotiated) and one just too small, then the end.
 */
function script(end: "ok" | "error" | "many"): Array<readonly ServerFrame[]> {
  if (end === "many") {
    // 2 MB in 8 batches: far more than the client's flow-control window takes at once.
    return Array.from({ length: 8 }, (_, b) =>
      Array.from({ length: 250 }, (_, i) => messageFrame(b * 250 + i, 1_000)),
    );
  }
  return [
    [frame({ case: "ready", value: { hostId: "edge-1" } }), messageFrame(1)],
    [messageFrame(2), messageOfSize(3, COMPRESS_MIN_BYTES), messageFrame(4)],
    [messageOfSize(5, COMPRESS_MIN_BYTES - 1), messageFrame(6, 20_000)],
    ...(end === "error"
      ? [[frame({ case: "close", value: { reason: CloseReason.REPLACED, message: "replaced" } })]]
      : []),
  ];
}

/** How many messages each call yielded to Connect (the rest went through the writer). */
const yielded: number[] = [];

const routes = (router: ConnectRouter) =>
  router.service(SessionService, {
    async *subscribe(_request, ctx) {
      const direct = ctx.requestHeader.get("x-direct") === "1";
      const end = (ctx.requestHeader.get("x-end") ?? "ok") as "ok" | "error" | "many";
      const response = direct ? currentResponse() : undefined;
      async function* batches() {
        for (const batch of script(end)) {
          yield batch;
          // Each batch on its own turn, as a device stream's queue hands them out.
          await new Promise((resolve) => setImmediate(resolve));
        }
        if (end === "error") throw new ConnectError("a newer stream replaced this one", Code.Aborted);
      }
      let count = 0;
      try {
        for await (const out of serveFrames(batches(), ctx, response, () => {})) {
          count++;
          yield out;
        }
      } finally {
        yielded.push(count);
      }
    },
  });

let server: EdgeHttpServer;
let url: string;

beforeAll(async () => {
  const handler = connectNodeAdapter({ routes, compressMinBytes: COMPRESS_MIN_BYTES });
  server = await listenHttp(withTransportAbort(handler), "127.0.0.1", 0);
  url = `http://127.0.0.1:${server.port}`;
});
afterAll(async () => {
  await server.close(100);
});

interface Answer {
  readonly status: number;
  readonly headers: Record<string, unknown>;
  readonly body: Buffer;
  readonly trailers: Record<string, unknown>;
}

const SUBSCRIBE = "/parley.edge.v1.SessionService/Subscribe";
/** SubscribeRequest{} in an envelope (flags 0, length 0). */
const EMPTY_ENVELOPE = Buffer.from([0, 0, 0, 0, 0]);

function clean(headers: Record<string, unknown>): Record<string, unknown> {
  const { date: _date, ...rest } = headers;
  return rest;
}

async function callHttp2(
  headers: Record<string, string>,
  body: Uint8Array,
  settings: http2.Settings = {},
): Promise<Answer> {
  const session = http2.connect(url, { settings });
  try {
    return await new Promise<Answer>((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": SUBSCRIBE, ...headers });
      let status = 0;
      let responseHeaders: Record<string, unknown> = {};
      let trailers: Record<string, unknown> = {};
      const chunks: Buffer[] = [];
      stream.on("response", (h) => {
        status = Number(h[":status"]);
        responseHeaders = clean({ ...h });
      });
      stream.on("trailers", (h) => {
        trailers = { ...h };
      });
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", reject);
      stream.on("close", () =>
        resolve({ status, headers: responseHeaders, body: Buffer.concat(chunks), trailers }),
      );
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

async function callHttp1(headers: Record<string, string>, body: Uint8Array): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const request = http.request(
      `${url}${SUBSCRIBE}`,
      { method: "POST", headers: { ...headers, connection: "close" } },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: clean({ ...response.headers }),
            body: Buffer.concat(chunks),
            trailers: { ...response.trailers },
          }),
        );
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

/** The envelopes of a body: flags and (decompressed) payload. */
function envelopes(body: Buffer): Array<{ flags: number; data: Buffer }> {
  const out: Array<{ flags: number; data: Buffer }> = [];
  for (let at = 0; at < body.length; ) {
    const flags = body[at] as number;
    const length = body.readUInt32BE(at + 1);
    const data = body.subarray(at + 5, at + 5 + length);
    out.push({ flags, data: flags & 1 ? gunzipSync(data) : data });
    at += 5 + length;
  }
  return out;
}

type Call = (headers: Record<string, string>, body: Uint8Array) => Promise<Answer>;

const cases: Array<{
  name: string;
  call: Call;
  headers: Record<string, string>;
  /** Messages the writer leaves to Connect besides the first: the compressed ones. */
  viaConnect: number;
  proto: boolean;
}> = [
  {
    name: "gRPC",
    call: callHttp2,
    headers: { "content-type": "application/grpc", te: "trailers" },
    viaConnect: 0,
    proto: true,
  },
  {
    name: "gRPC +proto, gzip accepted",
    call: callHttp2,
    headers: { "content-type": "application/grpc+proto", te: "trailers", "grpc-accept-encoding": "gzip" },
    viaConnect: 2,
    proto: true,
  },
  {
    name: "gRPC JSON (left to Connect)",
    call: callHttp2,
    headers: { "content-type": "application/grpc+json", te: "trailers" },
    viaConnect: 6,
    proto: false,
  },
  {
    name: "Connect streaming over HTTP/2",
    call: callHttp2,
    headers: { "content-type": "application/connect+proto", "connect-protocol-version": "1" },
    viaConnect: 0,
    proto: true,
  },
  {
    name: "Connect streaming over HTTP/2, gzip accepted",
    call: callHttp2,
    headers: {
      "content-type": "application/connect+proto",
      "connect-protocol-version": "1",
      "connect-accept-encoding": "gzip",
    },
    viaConnect: 2,
    proto: true,
  },
  {
    name: "Connect streaming over HTTP/1.1",
    call: callHttp1,
    headers: { "content-type": "application/connect+proto", "connect-protocol-version": "1" },
    viaConnect: 0,
    proto: true,
  },
  {
    name: "gRPC-Web over HTTP/1.1",
    call: callHttp1,
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
    viaConnect: 0,
    proto: true,
  },
  {
    name: "gRPC-Web over HTTP/2, gzip accepted",
    call: callHttp2,
    headers: {
      "content-type": "application/grpc-web+proto",
      "x-grpc-web": "1",
      "grpc-accept-encoding": "gzip",
    },
    viaConnect: 2,
    proto: true,
  },
];

describe("the frame writer", () => {
  it("waits for the transport under flow control and still writes what Connect writes", async () => {
    const headers = { "content-type": "application/grpc", te: "trailers", "x-end": "many" };
    // A 16 KiB window: the writer's writes report a full buffer and it waits for 'drain'.
    const settings = { initialWindowSize: 16 * 1024 };
    yielded.length = 0;
    const viaConnect = await callHttp2({ ...headers, "x-direct": "0" }, EMPTY_ENVELOPE, settings);
    const direct = await callHttp2({ ...headers, "x-direct": "1" }, EMPTY_ENVELOPE, settings);
    expect(direct).toEqual(viaConnect);
    expect(envelopes(direct.body)).toHaveLength(2_000);
    expect(yielded).toEqual([2_000, 1]);
    expect(direct.trailers["grpc-status"]).toBe("0");
  });

  for (const c of cases) {
    for (const end of ["ok", "error"] as const) {
      it(`writes what Connect writes: ${c.name}, stream ending ${end}`, async () => {
        const body = c.headers["content-type"]?.includes("json")
          ? Buffer.from([0, 0, 0, 0, 2, 0x7b, 0x7d])
          : EMPTY_ENVELOPE;
        yielded.length = 0;
        const viaConnect = await c.call({ ...c.headers, "x-direct": "0", "x-end": end }, body);
        const direct = await c.call({ ...c.headers, "x-direct": "1", "x-end": end }, body);
        expect(direct).toEqual(viaConnect);
        expect(direct.status).toBe(200);
        const frames = script(end).flat();
        // Connect got every frame one way, only the first and the compressed ones the other.
        expect(yielded).toEqual([frames.length, 1 + (c.proto ? c.viaConnect : frames.length - 1)]);
        if (!c.proto) return;
        // And the bytes are the frames, not two equally broken answers.
        const messages = envelopes(direct.body).filter((e) => (e.flags & 0x82) === 0);
        expect(messages.map((e) => fromBinary(SessionResponseSchema, new Uint8Array(e.data)).frame)).toEqual(
          frames,
        );
        expect(messages.map((e) => e.data)).toEqual(
          frames.map((f) =>
            Buffer.from(toBinary(SessionResponseSchema, create(SessionResponseSchema, { frame: f }))),
          ),
        );
        // With gzip, the big message went compressed (by Connect), the others as they were.
        expect(envelopes(direct.body).filter((e) => e.flags & 1)).toHaveLength(c.viaConnect);
      });
    }
  }
});
