import { Code } from "@connectrpc/connect";
import type { Attributes } from "@opentelemetry/api";
import { getMeter, MESSAGE_LATENCY_BUCKETS_S, RPC_DURATION_BUCKETS_S } from "../lib/metrics.ts";

/**
 * The edge's metrics. Calls: `rpc.server.call.duration` with `rpc.system.name` connectrpc (the
 * same instrument and attributes as the gRPC services, so one query covers the whole mesh; Connect
 * codes are gRPC's codes, named the same way). Streams: how many are open, opened and closed by
 * reason. Messages: the time from acceptance to the device's acknowledgement.
 */
const meter = getMeter("parley.edge");

const callDuration = meter.createHistogram("rpc.server.call.duration", {
  description: "Duration of incoming gRPC calls, by method and status",
  unit: "s",
  advice: { explicitBucketBoundaries: [...RPC_DURATION_BUCKETS_S] },
});

/** gRPC's canonical names of Connect's codes (Code.NotFound -> NOT_FOUND). */
function statusName(code: Code | undefined): string {
  if (code === undefined) return "OK";
  return (Code[code] ?? String(code)).replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
}

const callAttributeSets = new Map<string, Attributes>();

/** Records one edge call (a stream when it ends): `code` undefined is OK. */
export function recordEdgeCall(procedure: string, code: Code | undefined, seconds: number): void {
  const key = `${procedure} ${code ?? ""}`;
  let attributes = callAttributeSets.get(key);
  if (attributes === undefined) {
    attributes = Object.freeze({
      "rpc.system.name": "connectrpc",
      "rpc.method": procedure,
      "rpc.status_code": statusName(code),
    });
    callAttributeSets.set(key, attributes);
  }
  callDuration.record(seconds, attributes);
}

const streamGauge = meter.createObservableGauge("parley.edge.streams", {
  description: "Device streams (Session and Subscribe) open on this edge process",
  unit: "{stream}",
});
const streamSources = new Set<{ readonly size: number }>();
streamGauge.addCallback((result) => {
  if (streamSources.size === 0) return;
  let open = 0;
  for (const source of streamSources) open += source.size;
  result.observe(open);
});

/** Counts `hub`'s streams in `parley.edge.streams` until the returned function is called. */
export function observeStreams(hub: { readonly size: number }): () => void {
  streamSources.add(hub);
  return () => streamSources.delete(hub);
}

const opens = meter.createCounter("parley.edge.stream.opens", {
  description: "Device streams opened, by kind (session, subscribe): a reconnect storm shows here first",
  unit: "{stream}",
});
const closes = meter.createCounter("parley.edge.stream.closes", {
  description:
    "Device streams closed, by reason (the Close frame's, or ended, aborted, failed when there was none)",
  unit: "{stream}",
});
const ackLatency = meter.createHistogram("parley.message.ack.latency", {
  description:
    "Time from a message's acceptance (accepted_at) to its recipient device's first acknowledgement, for messages this edge pushed",
  unit: "s",
  advice: { explicitBucketBoundaries: [...MESSAGE_LATENCY_BUCKETS_S] },
});

const kindAttributes = {
  session: Object.freeze({ "parley.stream.kind": "session" }),
  subscribe: Object.freeze({ "parley.stream.kind": "subscribe" }),
};
const closeAttributeSets = new Map<string, Attributes>();
const receiptAttributes = {
  delivered: Object.freeze({ "parley.receipt.kind": "delivered" }),
  read: Object.freeze({ "parley.receipt.kind": "read" }),
};

/** What the stream hub and the session service report; `noStreamMetrics` in unit tests. */
export interface StreamMetrics {
  opened(kind: "session" | "subscribe"): void;
  /** `reason`: lower-case CloseReason name, or ended / aborted / failed. */
  closed(reason: string): void;
  /** A device acknowledged a message this edge pushed, `seconds` after it was accepted. */
  acknowledged(kind: "delivered" | "read", seconds: number): void;
}

export const edgeStreamMetrics: StreamMetrics = {
  opened: (kind) => opens.add(1, kindAttributes[kind]),
  closed(reason) {
    let attributes = closeAttributeSets.get(reason);
    if (attributes === undefined) {
      attributes = Object.freeze({ "parley.stream.close_reason": reason });
      closeAttributeSets.set(reason, attributes);
    }
    closes.add(1, attributes);
  },
  acknowledged: (kind, seconds) => ackLatency.record(seconds, receiptAttributes[kind]),
};

export const noStreamMetrics: StreamMetrics = {
  opened() {},
  closed() {},
  acknowledged() {},
};
