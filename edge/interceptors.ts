import type { DescMethod, DescService } from "@bufbuild/protobuf";
import type { Interceptor, StreamRequest, UnaryRequest } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Attributes, Context, Span } from "@opentelemetry/api";
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { toConnectError } from "../lib/connect-error.ts";
import { isParleyError, isUnexpectedError } from "../lib/errors.ts";
import { validateMessage } from "../lib/grpc/validation.ts";
import type { Logger } from "../lib/logging.ts";
import { FORCE_TRACE_ATTRIBUTE } from "../lib/telemetry.ts";
import { checkRequestSize } from "./message-size.ts";
import { recordEdgeCall } from "./metrics.ts";

const tracer = trace.getTracer("parley.edge");

// As for gRPC servers (lib/grpc/tracing.ts): a server span is an error only for server faults.
const SERVER_FAULTS = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

export interface TelemetryInterceptorOptions {
  /** Calls to sample whatever the ratio says (a Send with `force_trace`). */
  readonly forceTrace?: (req: UnaryRequest | StreamRequest) => boolean;
}

/**
 * A SERVER span per edge call (`rpc.system` connect_rpc), active while the handler runs, so the
 * internal gRPC calls it makes (lib/grpc client tracing) are its children and its log lines carry
 * its trace id; and the call's `rpc.server.call.duration` (edge/metrics.ts), measured over the
 * span, as the conventions ask, in the same wrapper of the stream (every frame a device receives
 * passes it). Outermost interceptor: the status is the one the client gets. Every call starts a
 * new trace: a public client's `traceparent` is not trusted (it could force sampling or join
 * someone else's trace). A streaming call's span lasts as long as its stream.
 */
export function createTelemetryInterceptor(options: TelemetryInterceptorOptions = {}): Interceptor {
  return (next) => async (req) => {
    const call = startEdgeCallTelemetry(req.service, req.method, options.forceTrace?.(req) === true);
    try {
      const res = await context.with(call.context, () => next(req));
      if (!res.stream) {
        call.end(undefined);
        return res;
      }
      const source = res.message[Symbol.asyncIterator]();
      return {
        ...res,
        // Each step of the handler's stream runs in the span's context, and the span ends with it.
        message: (async function* () {
          let failure: unknown;
          try {
            for (;;) {
              const step = await context.with(call.context, () => source.next());
              if (step.done === true) return;
              yield step.value;
            }
          } catch (err) {
            failure = err;
            throw err;
          } finally {
            if (failure === undefined && source.return !== undefined) {
              await context.with(call.context, () => source.return?.())?.catch(() => undefined);
            }
            call.end(failure);
          }
        })(),
      };
    } catch (err) {
      call.end(err);
      throw err;
    }
  };
}

/** A call's SERVER span and, when it ends, its duration metric (see createTelemetryInterceptor). */
export interface EdgeCallTelemetry {
  /** The span's context: what the handler runs in. */
  readonly context: Context;
  /** Ends the span with the call's outcome (an error, or undefined) and records the duration. */
  end(err: unknown): void;
}

/**
 * Starts the telemetry of an edge call: the interceptor's for calls Connect serves, and the direct
 * Session server's (direct-session.ts) for the streams it serves, so both look the same to an SRE.
 */
export function startEdgeCallTelemetry(
  service: DescService,
  method: DescMethod,
  forceTrace: boolean,
): EdgeCallTelemetry {
  const started = performance.now();
  const procedure = `${service.typeName}/${method.name}`;
  const attributes: Attributes = {
    "rpc.system": "connect_rpc",
    "rpc.service": service.typeName,
    "rpc.method": method.name,
    ...(forceTrace ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
  };
  const span = tracer.startSpan(procedure, { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
  return {
    context: trace.setSpan(ROOT_CONTEXT, span),
    end: (err) => endCall(span, err, procedure, started),
  };
}

function endCall(span: Span, err: unknown, procedure: string, started: number): void {
  const code = err === undefined ? undefined : ConnectError.from(err).code;
  recordEdgeCall(procedure, code, (performance.now() - started) / 1000);
  if (code !== undefined) {
    // Connect's wire names: not_found, resource_exhausted...
    const name = (Code[code] ?? String(code)).replace(
      /[A-Z]/g,
      (c, i: number) => (i === 0 ? "" : "_") + c.toLowerCase(),
    );
    span.setAttribute("rpc.connect_rpc.error_code", name);
    if (SERVER_FAULTS.has(code)) span.setStatus({ code: SpanStatusCode.ERROR, message: Code[code] });
  }
  span.end();
}

/**
 * Validates every unary and server-streaming request against its protovalidate rules before the
 * handler runs. Client-streamed frames (Session) are validated one by one by the handler instead:
 * a bad frame is answered with a FrameError and must not end the device's stream.
 */
export const validationInterceptor: Interceptor = (next) => async (req) => {
  if (!req.stream) {
    // The size first: a message over the limit is refused without validating it.
    checkRequestSize(req.method.input, req.message);
    validateMessage(req.method.input, req.message);
  }
  return next(req);
};

/**
 * The edge's single error boundary: whatever a handler throws reaches the client as a ConnectError
 * with the shared code + ErrorInfo mapping; unexpected errors are logged here and sent as
 * `internal` without their cause. Also one log line per call.
 */
export function createErrorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const boundary = edgeErrorBoundary(logger, req.service, req.method);
    try {
      const res = await next(req);
      if (!res.stream) {
        boundary.ended("rpc ok");
        return res;
      }
      const source = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* source;
            boundary.ended("stream ended");
          } catch (err) {
            throw boundary.failed(err);
          }
        })(),
      };
    } catch (err) {
      throw boundary.failed(err);
    }
  };
}

/** The error boundary of one call (see createErrorInterceptor). */
export interface EdgeErrorBoundary {
  /** Logs the call's end. */
  ended(how: "rpc ok" | "stream ended"): void;
  /** Logs the failure (unexpected ones with their cause) and returns what the client gets. */
  failed(err: unknown): ConnectError;
}

/**
 * The error boundary of an edge call: the interceptor's for calls Connect serves, and the direct
 * Session server's (direct-session.ts), so a client gets the same error and the log the same
 * lines from either.
 */
export function edgeErrorBoundary(
  logger: Logger,
  service: DescService,
  method: DescMethod,
): EdgeErrorBoundary {
  const started = performance.now();
  const rpc = `${service.typeName}/${method.name}`;
  return {
    ended(how) {
      logger.info({ rpc, duration_ms: elapsed(started) }, how);
    },
    failed(err) {
      if (isUnexpectedError(err)) logger.error({ rpc, err }, "unexpected error in edge handler");
      const connectError = toConnectError(err);
      const reason = isParleyError(err) ? err.reason : undefined;
      logger.info({ rpc, code: connectError.code, reason, duration_ms: elapsed(started) }, "rpc failed");
      return connectError;
    },
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 10) / 10;
}
