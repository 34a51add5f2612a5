// A Session served directly (direct-session.ts) must answer what connect-node answers with the
// edge's interceptors: the same response headers, the same bytes, the same end (gRPC trailers,
// the Connect end-stream message) for a stream that ends well, one the handler fails before or
// after its first frame, an unexpected error, a caller without a token; and the handler must see
// the same call (its caller, its signal aborted when the client resets). Two servers run the same
// handler over HTTP/2: one with the direct server in front of Connect, one with Connect alone.

import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { permissionDenied, resourceExhausted } from "../lib/errors.ts";
import { createLogger } from "../lib/logging.ts";
import type { StopTelemetry } from "../lib/telemetry.ts";
import { startTelemetry } from "../lib/telemetry.ts";
import { openDevIssuer } from "./auth/dev-issuer.ts";
import { createEdgeAuth } from "./auth/edge-auth.ts";
import { authenticatedCaller, authenticatedCallerKey, createAuthInterceptor } from "./auth/interceptor.ts";
import { DEFAULT_JWT_AUDIENCE, DEV_ISSUER, devIssuerAuthConfig, devIssuerKeyPath } from "./config.ts";
import { withDirectSession } from "./direct-session.ts";
import type { EdgeHttpServer, NodeHandlerFn } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import { createErrorInterceptor, createTelemetryInterceptor, validationInterceptor } from "./interceptors.ts";
import { withTransportAbort } from "./transport-scope.ts";

/** What the handler saw of each call, by the x-call header. */
interface Seen {
  readonly device: string;
  readonly protocol: string;
  readonly frames: number;
  readonly aborted: boolean;
}
const seen = new Map<string, Seen>();
/** Each call's handler context, to look at its signal once the call is over. */
const contexts = new Map<string, HandlerContext>();
const finished = new Map<string, () => void>();

/**
 * The handler both servers run. `x-scenario`: "echo" answers each client frame with a heartbeat
 * frame carrying its id; "fail-before" fails before any frame; "fail-after" after the first;
 * "unexpected" throws an error that is no ParleyError after the first; "wait" answers nothing
 * until the client goes.
 */
async function* session(requests: AsyncIterable<SessionRequest>, ctx: HandlerContext) {
  const call = ctx.requestHeader.get("x-call") ?? "";
  const scenario = ctx.requestHeader.get("x-scenario");
  contexts.set(call, ctx);
  let frames = 0;
  try {
    const device = authenticatedCaller(ctx).device.deviceId;
    if (scenario === "fail-before") {
      throw permissionDenied("DEVICE_NOT_REGISTERED", `device ${device} is not registered`, {
        metadata: { deviceId: device },
      });
    }
    ctx.responseHeader.set("x-device", device);
    ctx.responseTrailer.set("x-frames", "counted");
    for await (const request of requests) {
      frames++;
      if (scenario === "wait") continue;
      yield {
        frame: {
          frameId: request.frame?.frameId ?? 0n,
          body: {
            case: "heartbeat" as const,
            value: { serverTime: { seconds: 1_700_000_000n, nanos: frames } },
          },
        },
      };
      if (scenario === "fail-after") throw resourceExhausted("RATE_LIMITED", "too many frames, slow down");
      if (scenario === "unexpected") throw new Error("a secret cause the client must not see");
    }
    if (scenario === "wait") {
      // The reset ends the frames; the call's signal must abort for it too (or this test times out).
      await new Promise<void>((resolve) => {
        if (ctx.signal.aborted) resolve();
        else ctx.signal.addEventListener("abort", () => resolve(), { once: true });
      });
    }
  } finally {
    seen.set(call, {
      device: ctx.values.get(authenticatedCallerKey)?.device.deviceId ?? "",
      protocol: ctx.protocolName,
      frames,
      aborted: ctx.signal.aborted,
    });
    finished.get(call)?.();
  }
}

const exporter = new InMemorySpanExporter();
const spans = new SimpleSpanProcessor({ exporter });
let stopTelemetry: StopTelemetry;
const savedSampler = process.env.OTEL_TRACES_SAMPLER;
/** Each server's log lines. */
const logs = { direct: [] as Record<string, unknown>[], connect: [] as Record<string, unknown>[] };

let dir: string;
let token: string;
let direct: EdgeHttpServer;
let connect: EdgeHttpServer;
/** Requests the direct server left to Connect. */
let passedOn = 0;
/** Both servers' limit on a client frame (the edge's is 4 MiB). */
const READ_MAX_BYTES = 1_024;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "parley-direct-session-"));
  const auth = await createEdgeAuth(devIssuerAuthConfig(dir));
  const issuer = await openDevIssuer(devIssuerKeyPath(dir));
  token = await issuer.mint({
    userId: "alice",
    deviceId: "phone",
    ttlMs: 600_000,
    issuer: DEV_ISSUER,
    audience: DEFAULT_JWT_AUDIENCE,
  });
  process.env.OTEL_TRACES_SAMPLER = "always_on";
  stopTelemetry = startTelemetry({ serviceName: "direct-session-test", spanProcessors: [spans] });
  const logger = (lines: Record<string, unknown>[]) =>
    createLogger("test", "info", { write: (line: string) => lines.push(JSON.parse(line)) });
  const routes = (router: ConnectRouter) => router.service(SessionService, { session });
  const adapter = (logs: Record<string, unknown>[]) =>
    connectNodeAdapter({
      routes,
      readMaxBytes: READ_MAX_BYTES,
      interceptors: [
        createTelemetryInterceptor(),
        createErrorInterceptor(logger(logs)),
        createAuthInterceptor(auth.verifier),
        validationInterceptor,
      ],
    });
  // The direct server's Connect (for what it passes on) logs where the direct server does.
  const connectHandler = adapter(logs.direct);
  const counted: NodeHandlerFn = (req, res) => {
    passedOn++;
    connectHandler(req, res);
  };
  direct = await listenHttp(
    withTransportAbort(
      withDirectSession(
        { session, verifier: auth.verifier, logger: logger(logs.direct), readMaxBytes: READ_MAX_BYTES },
        counted,
      ),
    ),
    "127.0.0.1",
    0,
  );
  connect = await listenHttp(withTransportAbort(adapter(logs.connect)), "127.0.0.1", 0);
});
afterAll(async () => {
  await stopTelemetry();
  if (savedSampler === undefined) delete process.env.OTEL_TRACES_SAMPLER;
  else process.env.OTEL_TRACES_SAMPLER = savedSampler;
  await direct.close(100);
  await connect.close(100);
  rmSync(dir, { recursive: true, force: true });
});

const SESSION = "/parley.edge.v1.SessionService/Session";
/** The request header that accepts a response compression, and the response header naming it. */
const ACCEPT_ENCODING: Record<string, string> = {
  "application/grpc+proto": "grpc-accept-encoding",
  "application/grpc": "grpc-accept-encoding",
  "application/connect+proto": "connect-accept-encoding",
};
const ENCODING: Record<string, string> = {
  "application/grpc+proto": "grpc-encoding",
  "application/grpc": "grpc-encoding",
  "application/connect+proto": "connect-content-encoding",
};
const PROTOCOLS = {
  grpc: { "content-type": "application/grpc+proto", te: "trailers" },
  "grpc (no suffix)": { "content-type": "application/grpc", te: "trailers" },
  connect: { "content-type": "application/connect+proto", "connect-protocol-version": "1" },
} as const;

function envelope(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

const heartbeat = (frameId: number) =>
  envelope(
    toBinary(
      SessionRequestSchema,
      create(SessionRequestSchema, {
        frame: { frameId: BigInt(frameId), body: { case: "heartbeat", value: {} } },
      }),
    ),
  );

interface Answer {
  readonly status: number | undefined;
  readonly headers: Record<string, unknown>;
  readonly body: string;
  readonly trailers: Record<string, unknown>;
  readonly seen: Seen | undefined;
  /** The handler's signal once the call is over: aborted, and the code of its reason. */
  readonly signalAfter: { aborted: boolean; reason: string } | undefined;
  /** The call's SERVER span. */
  readonly span: { name: string; attributes: Record<string, unknown>; status: unknown } | undefined;
  /** The call's log lines, and whether each carries the span's trace id. */
  readonly logs: { msg: unknown; rpc: unknown; code: unknown; reason: unknown; inTrace: boolean }[];
}

const SESSION_SPAN = "parley.edge.v1.SessionService/Session";

/** The call's span once it has ended (after the client saw the end, in a reset's case). */
async function callSpan() {
  for (let waited = 0; waited < 2_000; waited += 5) {
    await spans.forceFlush();
    const span = exporter.getFinishedSpans().find((s) => s.name === SESSION_SPAN);
    if (span !== undefined) return span;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return undefined;
}

/** Opens a Session on `server`, writes `frames`, ends (or resets) it; what came back. */
async function call(
  server: EdgeHttpServer,
  headers: Record<string, string>,
  frames: readonly Buffer[],
  options: { scenario: string; token?: boolean; reset?: boolean },
): Promise<Answer> {
  const id = `${Math.random()}`;
  const lines = server === direct ? logs.direct : logs.connect;
  const firstLine = lines.length;
  exporter.reset();
  const handled = new Promise<void>((resolve) => finished.set(id, resolve));
  const client = http2.connect(`http://127.0.0.1:${server.port}`);
  try {
    const stream = client.request({
      ":method": "POST",
      ":path": SESSION,
      ...headers,
      ...(options.token === false ? {} : { authorization: `Bearer ${token}` }),
      "x-call": id,
      "x-scenario": options.scenario,
    });
    stream.on("error", () => {});
    let status: number | undefined;
    let responseHeaders: Record<string, unknown> = {};
    let trailers: Record<string, unknown> = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      const { date: _date, ":status": _status, ...rest } = h;
      responseHeaders = rest;
    });
    stream.on("trailers", (t) => {
      trailers = { ...t };
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    const closed = new Promise<void>((resolve) => stream.on("close", resolve));
    for (const frame of frames) stream.write(frame);
    if (options.reset === true) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      stream.close(http2.constants.NGHTTP2_CANCEL);
    } else if (options.scenario !== "unauthenticated") {
      stream.end();
    }
    await closed;
    // A handler that never ran (no token) reports nothing.
    if (options.token !== false) await handled;
    const span = await callSpan();
    const traceId = span?.spanContext().traceId;
    const signal = contexts.get(id)?.signal;
    return {
      status,
      headers: responseHeaders,
      body: Buffer.concat(chunks).toString("base64"),
      trailers,
      seen: seen.get(id),
      signalAfter:
        signal === undefined
          ? undefined
          : {
              aborted: signal.aborted,
              reason: String((signal.reason as { code?: unknown } | undefined)?.code),
            },
      span:
        span === undefined
          ? undefined
          : { name: span.name, attributes: { ...span.attributes }, status: span.status },
      logs: lines.slice(firstLine).map((line) => ({
        msg: line.msg,
        rpc: line.rpc,
        code: line.code,
        reason: line.reason,
        inTrace: traceId !== undefined && line.trace_id === traceId,
      })),
    };
  } finally {
    client.close();
  }
}

/** The trailers and the body as text, percent-decoded: where either protocol puts the error. */
function ending(answer: Answer): string {
  return decodeURIComponent(JSON.stringify(answer.trailers)) + Buffer.from(answer.body, "base64").toString();
}

/** The same call on both servers; the direct one must not have passed it on. */
async function bothWays(
  headers: Record<string, string>,
  frames: readonly Buffer[],
  options: { scenario: string; token?: boolean; reset?: boolean },
): Promise<{ viaConnect: Answer; viaDirect: Answer }> {
  const viaConnect = await call(connect, headers, frames, options);
  const before = passedOn;
  const viaDirect = await call(direct, headers, frames, options);
  expect(passedOn - before, "the direct server passed the Session on to Connect").toBe(0);
  return { viaConnect, viaDirect };
}

describe.each(Object.entries(PROTOCOLS))("a Session served directly over %s", (_name, headers) => {
  it("answers with Connect's headers, frames and end", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1), heartbeat(2), heartbeat(3)], {
      scenario: "echo",
    });
    expect(viaDirect).toEqual(viaConnect);
    expect(viaDirect.status).toBe(200);
    expect(viaDirect.headers["x-device"]).toBe("phone");
    expect(viaDirect.seen).toMatchObject({ device: "phone", frames: 3 });
    // The call's signal aborts once it is over, as Connect's does; its log line is in its trace.
    expect(viaDirect.signalAfter?.aborted).toBe(true);
    expect(viaDirect.logs).toEqual([expect.objectContaining({ msg: "stream ended", inTrace: true })]);
    expect(viaDirect.span?.attributes).toMatchObject({
      "rpc.system": "connect_rpc",
      "rpc.method": "Session",
    });
  });

  it("answers a client that accepts gzip uncompressed, otherwise as Connect does", async () => {
    const accepts = { ...headers, [String(ACCEPT_ENCODING[headers["content-type"]])]: "gzip" };
    const { viaConnect, viaDirect } = await bothWays(accepts, [heartbeat(1)], { scenario: "echo" });
    const encoding = String(ENCODING[headers["content-type"]]);
    expect(viaConnect.headers[encoding]).toBe("gzip");
    expect(viaDirect.headers[encoding]).toBeUndefined();
    const { [encoding]: _gzip, ...connectHeaders } = viaConnect.headers;
    // Frames under 1 KiB: Connect sends them uncompressed too.
    expect({ ...viaDirect, headers: viaDirect.headers }).toEqual({ ...viaConnect, headers: connectHeaders });
  });

  it("ends with the handler's error before any frame, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1)], { scenario: "fail-before" });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).toContain("not registered");
    expect(viaDirect.logs).toEqual([
      expect.objectContaining({ msg: "rpc failed", reason: "DEVICE_NOT_REGISTERED", inTrace: true }),
    ]);
  });

  it("ends with the handler's error after a frame, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1), heartbeat(2)], {
      scenario: "fail-after",
    });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).toContain("slow down");
  });

  it("refuses a client frame larger than readMaxBytes with RESOURCE_EXHAUSTED, as Connect does", async () => {
    const tooLarge = envelope(new Uint8Array(READ_MAX_BYTES + 1));
    // Alone: Connect splits every envelope of a received chunk before yielding the first, so a
    // frame before it in the same chunk would be read by one server and not the other.
    const { viaConnect, viaDirect } = await bothWays(headers, [tooLarge], { scenario: "echo" });
    expect(viaDirect).toEqual(viaConnect);
    expect(viaDirect.seen).toMatchObject({ frames: 0 });
    expect(ending(viaDirect)).toContain(`message size 1025 is larger than configured readMaxBytes 1024`);
    expect(viaDirect.logs.at(-1)).toMatchObject({ msg: "rpc failed", code: 8, inTrace: true });
  });

  it("hides an unexpected error's cause behind internal, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1)], { scenario: "unexpected" });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).not.toContain("secret");
    expect(viaDirect.logs.map((line) => [line.msg, line.inTrace])).toEqual([
      ["unexpected error in edge handler", true],
      ["rpc failed", true],
    ]);
    expect(viaDirect.span?.status).toMatchObject({ code: 2 });
  });

  it("refuses a caller without a token before the handler runs, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [], {
      scenario: "unauthenticated",
      token: false,
    });
    expect(viaDirect).toEqual(viaConnect);
    expect(viaDirect.seen).toBeUndefined();
  });

  it("aborts the handler's signal when the client resets its stream, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1)], {
      scenario: "wait",
      reset: true,
    });
    expect(viaDirect.seen).toEqual(viaConnect.seen);
    expect(viaDirect.seen).toMatchObject({ frames: 1, aborted: true });
    expect(viaDirect.signalAfter).toEqual(viaConnect.signalAfter);
    expect(viaDirect.logs).toEqual(viaConnect.logs);
    expect(viaDirect.span).toEqual(viaConnect.span);
  });
});

describe("what the direct server leaves to Connect", () => {
  it.each([
    ["a timeout header", { ...PROTOCOLS.grpc, "grpc-timeout": "5S" }, SESSION],
    ["a compressed client stream", { ...PROTOCOLS.grpc, "grpc-encoding": "gzip" }, SESSION],
    ["gRPC-Web", { "content-type": "application/grpc-web+proto" }, SESSION],
    ["JSON", { "content-type": "application/connect+json", "connect-protocol-version": "1" }, SESSION],
    ["a query string", PROTOCOLS.grpc, `${SESSION}?x=1`],
  ])("a Session with %s", async (_name, headers, path) => {
    const before = passedOn;
    const client = http2.connect(`http://127.0.0.1:${direct.port}`);
    try {
      const stream = client.request({ ":method": "POST", ":path": path, ...headers, "x-scenario": "echo" });
      stream.on("error", () => {});
      stream.resume();
      stream.end();
      await new Promise((resolve) => stream.on("close", resolve));
    } finally {
      client.close();
    }
    expect(passedOn - before).toBe(1);
  });
});
