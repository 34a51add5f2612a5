import type { Context, Span, TextMapGetter, TextMapSetter } from "@opentelemetry/api";
import {
  type Attributes,
  context as otelContext,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from "@opentelemetry/api";
import type {
  CallContext,
  CallOptions,
  ClientMiddleware,
  ClientMiddlewareCall,
  ServerMiddleware,
  ServerMiddlewareCall,
} from "nice-grpc";
import { ClientError, Metadata, ServerError, Status } from "nice-grpc";

const tracer = trace.getTracer("parley.grpc");

const getter: TextMapGetter<Metadata> = {
  keys: (carrier) => Array.from(carrier, ([key]) => key),
  get: (carrier, key) => {
    const value = carrier.get(key);
    return typeof value === "string" ? value : undefined;
  },
};

const setter: TextMapSetter<Metadata> = {
  set: (carrier, key, value) => {
    carrier.set(key, value);
  },
};

/**
 * Runs each step of an async generator inside an OpenTelemetry context. Middleware are async
 * generators, so `context.with()` around `yield*` would not reach the handler: only the code
 * that runs during a step's `next()` inherits the context.
 */
export async function* runInContext<T, R>(
  ctx: Context,
  generator: AsyncGenerator<T, R, undefined>,
): AsyncGenerator<T, R, undefined> {
  let finished = false;
  try {
    let step = await otelContext.with(ctx, () => generator.next());
    while (!step.done) {
      try {
        yield step.value;
      } catch (err) {
        step = await otelContext.with(ctx, () => generator.throw(err));
        continue;
      }
      step = await otelContext.with(ctx, () => generator.next());
    }
    finished = true;
    return step.value;
  } finally {
    if (!finished) {
      // Stop the inner generator too when our consumer stops early or the inner one threw.
      await otelContext.with(ctx, () => generator.return(undefined as R)).catch(() => undefined);
    }
  }
}

function spanAttributes(path: string) {
  const [, service = "", method = ""] = path.split("/");
  return { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method };
}

/** The gRPC status a middleware sees in an error: ServerError/ClientError codes, else UNKNOWN. */
export function statusOf(err: unknown): Status {
  if (err instanceof ServerError || err instanceof ClientError) {
    return err.code;
  }
  if (err instanceof Error && err.name === "AbortError") {
    return Status.CANCELLED;
  }
  return Status.UNKNOWN;
}

// The OpenTelemetry gRPC conventions: a server span is an error only for server faults.
const SERVER_FAULTS = new Set([
  Status.UNKNOWN,
  Status.DEADLINE_EXCEEDED,
  Status.UNIMPLEMENTED,
  Status.INTERNAL,
  Status.UNAVAILABLE,
  Status.DATA_LOSS,
]);

function endSpan(span: Span, code: Status, isServer: boolean, message?: string) {
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== Status.OK && (!isServer || SERVER_FAULTS.has(code))) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: message ?? Status[code] });
  }
  span.end();
}

/**
 * Continues the caller's trace (W3C `traceparent` metadata) in a server span, active while the
 * handler runs, so logs, outgoing calls and broker messages carry the same trace id.
 */
export const serverTracingMiddleware: ServerMiddleware = async function* serverTracing<Req, Res>(
  call: ServerMiddlewareCall<Req, Res>,
  context: CallContext,
) {
  const parent = propagation.extract(otelContext.active(), context.metadata, getter);
  const path = call.method.path;
  const span = tracer.startSpan(
    path.slice(1),
    { kind: SpanKind.SERVER, attributes: spanAttributes(path) },
    parent,
  );
  // Stays CANCELLED when the stream is abandoned before it ends.
  let code = Status.CANCELLED;
  let message: string | undefined;
  try {
    const result = yield* runInContext<Res, Res | undefined>(
      trace.setSpan(parent, span),
      call.next(call.request, context) as AsyncGenerator<Res, Res | undefined, undefined>,
    );
    code = Status.OK;
    return result;
  } catch (err) {
    code = statusOf(err);
    message = err instanceof ServerError ? err.details : undefined;
    throw err;
  } finally {
    endSpan(span, code, true, message);
  }
};

/**
 * Runs one item of a batch call (requests of several callers in one call) in a SERVER span
 * `<service>/<method> <item>` whose parent is the item's own `traceparent`, as its own call's span
 * would be: the item's work, logs and the events it causes continue its caller's trace, and the
 * batch call's span (linked, when sampled) keeps only the batch. The span has
 * `parley.batch_item=true`, so request counts derived from spans can leave it out. An item without
 * a valid traceparent runs in the batch call's context and gets no span of its own. `codeOf` reads
 * the item's gRPC status from its result (an item fails in its result, not by throwing).
 */
export async function inBatchItemSpan<T>(
  item: {
    readonly path: string;
    readonly name: string;
    readonly traceparent: string;
    readonly attributes?: Attributes;
  },
  run: () => Promise<T>,
  codeOf: (result: T) => { readonly code: Status; readonly message?: string },
): Promise<T> {
  const parent = propagation.extract(ROOT_CONTEXT, { traceparent: item.traceparent });
  // Empty, or ids the propagator refuses (all zeros): a span here would start a stray trace.
  if (trace.getSpanContext(parent) === undefined) return run();
  const batch = trace.getActiveSpan()?.spanContext();
  const batchSampled = batch !== undefined && (batch.traceFlags & TraceFlags.SAMPLED) !== 0;
  const span = tracer.startSpan(
    `${item.path.slice(1)} ${item.name}`,
    {
      kind: SpanKind.SERVER,
      attributes: { ...spanAttributes(item.path), "parley.batch_item": true, ...item.attributes },
      links: batchSampled ? [{ context: batch, attributes: { "parley.link.kind": "batch" } }] : [],
    },
    parent,
  );
  let code = Status.UNKNOWN;
  let message: string | undefined;
  try {
    const result = await otelContext.with(trace.setSpan(parent, span), run);
    ({ code, message } = codeOf(result));
    return result;
  } finally {
    endSpan(span, code, true, message);
  }
}

/** Starts a client span per call and sends it as `traceparent`, so the server joins the trace. */
export const clientTracingMiddleware: ClientMiddleware = async function* clientTracing<Req, Res>(
  call: ClientMiddlewareCall<Req, Res>,
  options: CallOptions,
) {
  const path = call.method.path;
  const span = tracer.startSpan(path.slice(1), { kind: SpanKind.CLIENT, attributes: spanAttributes(path) });
  const ctx = trace.setSpan(otelContext.active(), span);
  const metadata = Metadata(options.metadata);
  propagation.inject(ctx, metadata, setter);
  let code = Status.CANCELLED;
  let message: string | undefined;
  try {
    const result = yield* call.next(call.request, { ...options, metadata });
    code = Status.OK;
    return result;
  } catch (err) {
    code = statusOf(err);
    message = err instanceof ClientError ? err.details : undefined;
    throw err;
  } finally {
    endSpan(span, code, false, message);
  }
};
