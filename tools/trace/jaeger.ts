/**
 * Spans of one message from a Jaeger query service (its HTTP JSON API, `/api/...`, as the Jaeger UI
 * uses it), converted to the span file's records so one renderer serves both sources.
 *
 * Jaeger keeps span links as references (FOLLOWS_FROM) without their attributes, array attributes
 * as strings, and the span kind and status as tags; the conversion undoes what it can.
 */
import type { AttributeValue } from "@opentelemetry/api";
import type { SpanKindName, SpanRecord } from "../../lib/span-file.ts";

interface JaegerTag {
  readonly key: string;
  readonly type?: string;
  readonly value: unknown;
}

interface JaegerSpan {
  readonly traceID: string;
  readonly spanID: string;
  readonly operationName: string;
  readonly references?: ReadonlyArray<{
    readonly refType: string;
    readonly traceID: string;
    readonly spanID: string;
  }>;
  /** Microseconds since the epoch. */
  readonly startTime: number;
  /** Microseconds. */
  readonly duration: number;
  readonly tags?: readonly JaegerTag[];
  readonly logs?: ReadonlyArray<{ readonly timestamp: number; readonly fields?: readonly JaegerTag[] }>;
  readonly processID: string;
}

export interface JaegerTrace {
  readonly traceID: string;
  readonly spans: readonly JaegerSpan[];
  readonly processes: Readonly<Record<string, { readonly serviceName: string }>>;
}

const KINDS: Readonly<Record<string, SpanKindName>> = {
  server: "SERVER",
  client: "CLIENT",
  producer: "PRODUCER",
  consumer: "CONSUMER",
  internal: "INTERNAL",
};

/** Tags the conversion turns into fields rather than attributes. */
const STRUCTURAL = new Set([
  "span.kind",
  "otel.status_code",
  "otel.status_description",
  "otel.scope.name",
  "otel.library.name",
  "error",
]);

const pad = (id: string, length: number) => id.padStart(length, "0");

function tagValue(tag: JaegerTag): AttributeValue {
  const value = tag.value;
  if (typeof value === "string" && value.startsWith("[")) {
    // OTLP array attributes arrive as their JSON text.
    try {
      const parsed: unknown = JSON.parse(value);
      if (Array.isArray(parsed)) return parsed as AttributeValue;
    } catch {
      // A string that merely starts with a bracket.
    }
  }
  if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") return value;
  return String(value);
}

export function fromJaegerTrace(trace: JaegerTrace): SpanRecord[] {
  return trace.spans.map((span) => {
    const traceId = pad(span.traceID, 32);
    const tags = new Map((span.tags ?? []).map((t) => [t.key, t]));
    const attributes: Record<string, AttributeValue> = {};
    for (const tag of span.tags ?? []) if (!STRUCTURAL.has(tag.key)) attributes[tag.key] = tagValue(tag);
    const references = span.references ?? [];
    const parent = references.find((r) => r.refType === "CHILD_OF" && pad(r.traceID, 32) === traceId);
    const startNanos = BigInt(Math.round(span.startTime)) * 1000n;
    const statusCode = tags.get("otel.status_code")?.value;
    const description = tags.get("otel.status_description")?.value;
    return {
      traceId,
      spanId: pad(span.spanID, 16),
      ...(parent === undefined ? {} : { parentSpanId: pad(parent.spanID, 16) }),
      name: span.operationName,
      kind: KINDS[String(tags.get("span.kind")?.value ?? "internal")] ?? "INTERNAL",
      service: trace.processes[span.processID]?.serviceName ?? "unknown",
      scope: String(tags.get("otel.scope.name")?.value ?? tags.get("otel.library.name")?.value ?? ""),
      startTimeUnixNano: startNanos.toString(),
      endTimeUnixNano: (startNanos + BigInt(Math.round(span.duration)) * 1000n).toString(),
      status: {
        code:
          statusCode === "ERROR" || tags.get("error")?.value === true
            ? "ERROR"
            : statusCode === "OK"
              ? "OK"
              : "UNSET",
        ...(typeof description === "string" ? { message: description } : {}),
      },
      attributes,
      links: references
        .filter((r) => r !== parent)
        .map((r) => ({ traceId: pad(r.traceID, 32), spanId: pad(r.spanID, 16), attributes: {} })),
      events: (span.logs ?? []).map((log) => ({
        name: String(log.fields?.find((f) => f.key === "event")?.value ?? "log"),
        timeUnixNano: (BigInt(Math.round(log.timestamp)) * 1000n).toString(),
        attributes: {},
      })),
    };
  });
}

/** The operations of an acknowledgement: a Session ack frame, or the unary Ack. */
const ACK_OPERATIONS = ["parley.edge.v1.SessionService/Session ack", "parley.edge.v1.SessionService/Ack"];

export interface JaegerOptions {
  /** How far back to search, in Jaeger's duration syntax. Default 48h. */
  readonly lookback?: string;
  readonly fetch?: typeof fetch;
}

/**
 * The spans of `messageId`'s trace and of the acks linking to it, from the Jaeger at `baseUrl`:
 * every `parley*` service is searched for the tag `parley.message_id`, then for ack spans of the
 * message's conversation after it was sent; only those with a reference to the message's trace
 * are kept (Jaeger drops link attributes, so an ack covering several messages is kept whole).
 */
export async function fetchFromJaeger(
  baseUrl: string,
  messageId: string,
  options: JaegerOptions = {},
): Promise<SpanRecord[]> {
  const get = options.fetch ?? fetch;
  const base = baseUrl.replace(/\/+$/, "");
  const lookback = options.lookback ?? "48h";
  const json = async <T>(path: string, query: Record<string, string>): Promise<T> => {
    const url = `${base}${path}?${new URLSearchParams(query)}`;
    const response = await get(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return (await response.json()) as T;
  };
  const services = (await json<{ data: string[] | null }>("/api/services", {})).data ?? [];
  const parley = services.filter((s) => s.startsWith("parley"));
  const searched = parley.length > 0 ? parley : services;

  const traces = new Map<string, JaegerTrace>();
  for (const service of searched) {
    const found = await json<{ data: JaegerTrace[] | null }>("/api/traces", {
      service,
      tags: JSON.stringify({ "parley.message_id": messageId }),
      lookback,
      limit: "20",
    });
    for (const trace of found.data ?? []) traces.set(pad(trace.traceID, 32), trace);
  }
  const spans = [...traces.values()].flatMap(fromJaegerTrace);
  if (spans.length === 0) return [];

  const messageTraces = new Set(traces.keys());
  const conversationId = spans
    .map((s) => s.attributes["parley.conversation_id"])
    .find((c): c is string => typeof c === "string");
  if (conversationId === undefined) return spans;
  const sentAtMicros = spans.reduce((min, s) => {
    const micros = BigInt(s.startTimeUnixNano) / 1000n;
    return micros < min ? micros : min;
  }, BigInt(Number.MAX_SAFE_INTEGER));
  const acks = new Map<string, JaegerTrace>();
  for (const service of searched) {
    for (const operation of ACK_OPERATIONS) {
      const found = await json<{ data: JaegerTrace[] | null }>("/api/traces", {
        service,
        operation,
        tags: JSON.stringify({ "parley.conversation_id": conversationId }),
        start: sentAtMicros.toString(),
        end: (BigInt(Date.now()) * 1000n).toString(),
        limit: "1000",
      });
      for (const trace of found.data ?? []) {
        const links = trace.spans.some((s) =>
          (s.references ?? []).some((r) => messageTraces.has(pad(r.traceID, 32))),
        );
        if (links) acks.set(pad(trace.traceID, 32), trace);
      }
    }
  }
  return [...spans, ...[...acks.values()].flatMap(fromJaegerTrace)];
}
