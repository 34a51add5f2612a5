import type { Interceptor, StreamRequest, UnaryRequest } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Attributes, Span } from "@opentelemetry/api";
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { toConnectError } from "../lib/connect-error.ts";
import { isParleyError, isUnexpectedError } from "../lib/errors.ts";
import { validateMessage } from "../lib/grpc/validation.ts";
import type { Logger } from "../lib/logging.ts";
import { FORCE_TRACE_ATTRIBUTE } from "../lib/telemetry.ts";
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
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const attributes: Attributes = {
      "rpc.system": "connect_rpc",
      "rpc.service": req.service.typeName,
      "rpc.method": req.method.name,
      ...(options.forceTrace?.(req) === true ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
    };
    const span = tracer.startSpan(procedure, { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
    const end = (err: unknown) => endCall(span, err, procedure, started);
    const ctx = trace.setSpan(ROOT_CONTEXT, span);
    try {
      const res = await context.with(ctx, () => next(req));
      if (!res.stream) {
        end(undefined);
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
              const step = await context.with(ctx, () => source.next());
              if (step.done === true) return;
              yield step.value;
            }
          } catch (err) {
            failure = err;
            throw err;
          } finally {
            if (failure === undefined && source.return !== undefined) {
              await context.with(ctx, () => source.return?.())?.catch(() => undefined);
            }
            end(failure);
          }
        })(),
      };
    } catch (err) {
      end(err);
      throw err;
    }
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
  if (!req.stream) validateMessage(req.method.input, req.message);
  return next(req);
};

/**
 * The edge's single error boundary: whatever a handler throws reaches the client as a ConnectError
 * with the shared code + ErrorInfo mapping; unexpected errors are logged here and sent as
 * `internal` without their cause. Also one log line per call.
 */
export function createErrorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const fail = (err: unknown): never => {
      if (isUnexpectedError(err)) logger.error({ rpc, err }, "unexpected error in edge handler");
      const connectError = toConnectError(err);
      const reason = isParleyError(err) ? err.reason : undefined;
      logger.info({ rpc, code: connectError.code, reason, duration_ms: elapsed(started) }, "rpc failed");
      throw connectError;
    };
    try {
      const res = await next(req);
      if (!res.stream) {
        logger.info({ rpc, duration_ms: elapsed(started) }, "rpc ok");
        return res;
      }
      const source = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* source;
            logger.info({ rpc, duration_ms: elapsed(started) }, "stream ended");
          } catch (err) {
            fail(err);
          }
        })(),
      };
    } catch (err) {
      return fail(err);
    }
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 10) / 10;
}
