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
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { permissionDenied, resourceExhausted } from "../lib/errors.ts";
import { createLogger } from "../lib/logging.ts";
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

let dir: string;
let token: string;
let direct: EdgeHttpServer;
let connect: EdgeHttpServer;
/** Requests the direct server left to Connect. */
let passedOn = 0;

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
  const logger = createLogger("test", "silent");
  const routes = (router: ConnectRouter) => router.service(SessionService, { session });
  const adapter = () =>
    connectNodeAdapter({
      routes,
      interceptors: [
        createTelemetryInterceptor(),
        createErrorInterceptor(logger),
        createAuthInterceptor(auth.verifier),
        validationInterceptor,
      ],
    });
  const connectHandler = adapter();
  const counted: NodeHandlerFn = (req, res) => {
    passedOn++;
    connectHandler(req, res);
  };
  direct = await listenHttp(
    withTransportAbort(withDirectSession({ session, verifier: auth.verifier, logger }, counted)),
    "127.0.0.1",
    0,
  );
  connect = await listenHttp(withTransportAbort(adapter()), "127.0.0.1", 0);
});
afterAll(async () => {
  await direct.close(100);
  await connect.close(100);
  rmSync(dir, { recursive: true, force: true });
});

const SESSION = "/parley.edge.v1.SessionService/Session";
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
}

/** Opens a Session on `server`, writes `frames`, ends (or resets) it; what came back. */
async function call(
  server: EdgeHttpServer,
  headers: Record<string, string>,
  frames: readonly Buffer[],
  options: { scenario: string; token?: boolean; reset?: boolean },
): Promise<Answer> {
  const id = `${Math.random()}`;
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
    return {
      status,
      headers: responseHeaders,
      body: Buffer.concat(chunks).toString("base64"),
      trailers,
      seen: seen.get(id),
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
  });

  it("ends with the handler's error before any frame, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1)], { scenario: "fail-before" });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).toContain("not registered");
  });

  it("ends with the handler's error after a frame, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1), heartbeat(2)], {
      scenario: "fail-after",
    });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).toContain("slow down");
  });

  it("hides an unexpected error's cause behind internal, as Connect does", async () => {
    const { viaConnect, viaDirect } = await bothWays(headers, [heartbeat(1)], { scenario: "unexpected" });
    expect(viaDirect).toEqual(viaConnect);
    const ended = ending(viaDirect);
    expect(ended).not.toContain("secret");
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
  });
});

describe("what the direct server leaves to Connect", () => {
  it("a Session with a timeout header", async () => {
    const before = passedOn;
    const answer = await call(direct, { ...PROTOCOLS.grpc, "grpc-timeout": "5S" }, [heartbeat(1)], {
      scenario: "echo",
    });
    expect(answer.status).toBe(200);
    expect(answer.seen?.frames).toBe(1);
    expect(passedOn - before).toBe(1);
  });
});
