import http2 from "node:http2";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import type { ConnectError, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { createContextValues, createHandlerContext } from "@connectrpc/connect";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import { createEndStreamSerialization, endStreamFlag } from "@connectrpc/connect/protocol-connect";
import { grpcStatusOk, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { universalRequestFromNodeRequest } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import type { SessionResponseSchema as SessionResponseSchemaType } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionResponseSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import type { Logger } from "../lib/logging.ts";
import { authenticatedCallerKey } from "./auth/interceptor.ts";
import type { TokenVerifier } from "./auth/verifier.ts";
import { directClientFrames } from "./client-frames.ts";
import { drainOf, responseGone } from "./frame-writer.ts";
import type { NodeHandlerFn } from "./http-server.ts";
import { edgeErrorBoundary, startEdgeCallTelemetry } from "./interceptors.ts";
import type { NodeRequest } from "./transport-scope.ts";

type SessionResponseInit = MessageInitShape<typeof SessionResponseSchemaType>;

const SESSION_PATH = `/${SessionService.typeName}/${SessionService.method.session.name}`;
const endStream = createEndStreamSerialization(undefined);

export interface DirectSessionOptions {
  /** The Session handler Connect serves too (session-service.ts). */
  readonly session: ServiceImpl<typeof SessionService>["session"];
  readonly verifier: TokenVerifier;
  readonly logger: Logger;
  /** The largest client frame read (connectNodeAdapter's `readMaxBytes` for the other calls). */
  readonly readMaxBytes: number;
}

/**
 * Serves Session calls straight on node:http2 where the protocol allows, and hands every other
 * request to `next` (connect-node).
 *
 * Why: connect-node's per-call machinery (its chain of async generators between the handler and
 * the response, their promises and closures) was half of an idle device stream's heap: 46 KB per
 * stream with it, 23 KB without (bench/README.md, S3), while the stream's frames already bypassed
 * it (frame-writer.ts, client-frames.ts). A device's stream is the one call an edge holds by the
 * hundred thousand.
 *
 * Which calls: a Session over HTTP/2, binary gRPC or the Connect streaming protocol, whose client
 * frames client-frames.ts can read (neither a compressed client stream nor a timeout header).
 * Connect serves the rest (HTTP/1.1, JSON, compression, timeouts, every other method) as before.
 *
 * How it stays what Connect would do: the call runs the same steps as the edge's interceptors,
 * through the same functions (a span and a duration, the error boundary and its log lines, the
 * token check), then the same handler with a HandlerContext made by Connect's own factory, whose
 * signal aborts as Connect's does. Headers go out with the first frame. Envelopes and the end are
 * written with Connect's own helpers: gRPC's status trailers, or the Connect protocol's end-stream
 * message.
 * One difference on the wire, on purpose: responses are never compressed. Where a client accepts
 * gzip (connect-node clients do by default) Connect would answer with `grpc-encoding` (or
 * `connect-content-encoding`) and compress each frame of at least 1 KiB; here the header is absent
 * and the frames go as they are, which the protocols allow. A stream's frames carry ciphertext,
 * which does not compress. `direct-session.test.ts` runs the same calls through both.
 */
export function withDirectSession(options: DirectSessionOptions, next: NodeHandlerFn): NodeHandlerFn {
  return (req, res) => {
    if (!(req instanceof http2.Http2ServerRequest) || !(res instanceof http2.Http2ServerResponse)) {
      return next(req, res);
    }
    const requests =
      req.method === "POST" && req.url === SESSION_PATH
        ? directClientFrames(req, options.readMaxBytes)
        : undefined;
    if (requests === undefined) return next(req, res);
    let universal: ReturnType<typeof universalRequestFromNodeRequest>;
    try {
      universal = universalRequestFromNodeRequest(req, res, undefined, createContextValues());
    } catch {
      // A request Connect cannot describe (no authority): Connect answers it as it would anyway.
      return next(req, res);
    }
    serveSession(options, req, res, universal, requests).catch((err: unknown) => {
      // Only a bug gets here: every failure of the call is the call's own end.
      options.logger.error({ err, rpc: SESSION_PATH }, "direct session failed");
      if (!res.stream.destroyed) res.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
  };
}

async function serveSession(
  options: DirectSessionOptions,
  req: NodeRequest,
  res: http2.Http2ServerResponse,
  universal: ReturnType<typeof universalRequestFromNodeRequest>,
  requests: NonNullable<ReturnType<typeof directClientFrames>>,
): Promise<void> {
  const grpc = req.headers["content-type"] !== "application/connect+proto";
  const ctx = createHandlerContext({
    service: SessionService,
    method: SessionService.method.session,
    protocolName: grpc ? "grpc" : "connect",
    requestMethod: "POST",
    url: universal.url,
    requestSignal: universal.signal,
    requestHeader: universal.header,
    responseHeader: { "content-type": grpc ? "application/grpc+proto" : "application/connect+proto" },
    responseTrailer: grpc ? { "grpc-status": grpcStatusOk } : {},
    contextValues: universal.contextValues,
  });
  const telemetry = startEdgeCallTelemetry(SessionService, SessionService.method.session, false);
  // Every step runs in the call's span, as under the interceptors: the log lines carry its trace id.
  const inSpan = <T>(step: () => T): T => context.with(telemetry.context, step);
  const boundary = edgeErrorBoundary(options.logger, SessionService, SessionService.method.session);
  let failed = false;
  let failure: unknown;
  let messages: AsyncIterator<unknown> | undefined;
  // A write to a reset stream fails with an 'error' event: the call ends through its signal then.
  const ignoreWriteError = () => {};
  res.on("error", ignoreWriteError);
  try {
    const caller = await inSpan(() => options.verifier.authenticate(ctx.requestHeader.get("authorization")));
    ctx.values.set(authenticatedCallerKey, caller);
    const iterator = inSpan(() => options.session(requests, ctx)[Symbol.asyncIterator]());
    messages = iterator;
    for (;;) {
      const step = await inSpan(() => iterator.next());
      if (step.done === true) break;
      // Backpressure: the next message waits until the response drains (or closes).
      if (!writeMessage(res, ctx, step.value as SessionResponseInit))
        await drainOf(res, () => responseGone(res));
    }
  } catch (err) {
    failed = true;
    failure = err;
  }
  // The handler may be suspended at a yield (a write failed): its cleanup runs now.
  if (failed) await inSpan(() => messages?.return?.())?.catch(() => undefined);
  // Connect's order: the boundary's log line, the span's end, the call's abort, then the end.
  const error = failed ? inSpan(() => boundary.failed(failure)) : undefined;
  if (!failed) inSpan(() => boundary.ended("stream ended"));
  telemetry.end(error);
  ctx.abort(error);
  writeEnd(res, ctx, grpc, error);
  res.off("error", ignoreWriteError);
}

/**
 * Writes one message the handler yielded (the first frame, which the headers go out with; then
 * only frames frame-writer.ts leaves to Connect, which here are none) as Connect's serializer
 * would; false when the caller must wait for the response to drain.
 */
function writeMessage(
  res: http2.Http2ServerResponse,
  ctx: HandlerContext,
  message: SessionResponseInit,
): boolean {
  if (responseGone(res)) return true;
  if (!res.headersSent) res.writeHead(200, nodeHeaders(ctx.responseHeader));
  return res.write(
    encodeEnvelope(0, toBinary(SessionResponseSchema, create(SessionResponseSchema, message))),
  );
}

/** The call's end: gRPC's status trailers, or the Connect protocol's end-stream message. */
function writeEnd(
  res: http2.Http2ServerResponse,
  ctx: HandlerContext,
  grpc: boolean,
  error: ConnectError | undefined,
): void {
  if (responseGone(res)) return;
  if (!res.headersSent) res.writeHead(200, nodeHeaders(ctx.responseHeader));
  if (grpc) {
    setTrailerStatus(ctx.responseTrailer, error);
    res.addTrailers(nodeHeaders(ctx.responseTrailer));
  } else {
    const end = endStream.serialize({
      metadata: ctx.responseTrailer,
      ...(error === undefined ? {} : { error }),
    });
    res.write(encodeEnvelope(endStreamFlag, end));
  }
  res.end();
}

/** As connect-node's webHeaderToNodeHeaders: repeated set-cookie values stay apart. */
function nodeHeaders(headers: Headers): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = Object.fromEntries(headers);
  const cookies = headers.getSetCookie();
  if (cookies.length > 0) out["set-cookie"] = cookies;
  return out;
}
