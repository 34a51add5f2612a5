import type { Attributes } from "@opentelemetry/api";
import type {
  CallContext,
  CallOptions,
  ClientMiddleware,
  ClientMiddlewareCall,
  ServerMiddleware,
  ServerMiddlewareCall,
} from "nice-grpc";
import { Status } from "nice-grpc";
import { getMeter, RPC_DURATION_BUCKETS_S } from "../metrics.ts";
import { statusOf } from "./tracing.ts";

/**
 * RED metrics of every gRPC call, after the OpenTelemetry RPC conventions (stable, v1.3x):
 * `rpc.server.call.duration` and `rpc.client.call.duration` histograms in seconds, by
 * `rpc.system.name` (grpc), `rpc.method` (`parley.sender.v1.SenderService/SendMessage`) and
 * `rpc.status_code` (`OK`, `NOT_FOUND`...). Their counts are the request and error rates. A stream
 * is measured from its start to its end, like its span.
 */
const meter = getMeter("parley.grpc");
const serverDuration = meter.createHistogram("rpc.server.call.duration", {
  description: "Duration of incoming gRPC calls, by method and status",
  unit: "s",
  advice: { explicitBucketBoundaries: [...RPC_DURATION_BUCKETS_S] },
});
const clientDuration = meter.createHistogram("rpc.client.call.duration", {
  description: "Duration of outgoing gRPC calls (every retry included), by method and status",
  unit: "s",
  advice: { explicitBucketBoundaries: [...RPC_DURATION_BUCKETS_S] },
});

// One frozen attribute set per method and status, made on first use: methods and codes are
// bounded (unknown methods never reach middleware), and the hot path allocates nothing.
const attributeSets = new Map<string, Attributes[]>();

function callAttributes(path: string, code: Status): Attributes {
  let byCode = attributeSets.get(path);
  if (byCode === undefined) {
    byCode = [];
    attributeSets.set(path, byCode);
  }
  let attributes = byCode[code];
  if (attributes === undefined) {
    attributes = Object.freeze({
      "rpc.system.name": "grpc",
      "rpc.method": path.slice(1),
      "rpc.status_code": Status[code] ?? String(code),
    });
    byCode[code] = attributes;
  }
  return attributes;
}

/** Records `rpc.server.call.duration`; attach it next to tracing, outside the error mapping. */
export const serverMetricsMiddleware: ServerMiddleware = async function* serverMetrics<Req, Res>(
  call: ServerMiddlewareCall<Req, Res>,
  context: CallContext,
) {
  const started = performance.now();
  // Stays CANCELLED when the stream is abandoned before it ends.
  let code = Status.CANCELLED;
  try {
    const result = yield* call.next(call.request, context);
    code = Status.OK;
    return result;
  } catch (err) {
    code = statusOf(err);
    throw err;
  } finally {
    serverDuration.record((performance.now() - started) / 1000, callAttributes(call.method.path, code));
  }
};

/** Records `rpc.client.call.duration` over every attempt of a call. */
export const clientMetricsMiddleware: ClientMiddleware = async function* clientMetrics<Req, Res>(
  call: ClientMiddlewareCall<Req, Res>,
  options: CallOptions,
) {
  const started = performance.now();
  let code = Status.CANCELLED;
  try {
    const result = yield* call.next(call.request, options);
    code = Status.OK;
    return result;
  } catch (err) {
    code = statusOf(err);
    throw err;
  } finally {
    clientDuration.record((performance.now() - started) / 1000, callAttributes(call.method.path, code));
  }
};
