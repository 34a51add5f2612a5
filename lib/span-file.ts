/**
 * Spans as JSON lines in a local file (`PARLEY_TRACE_FILE`), for machines without a collector:
 * `npm run trace -- <message-id>` reads them back. One line per span, appended in batches; several
 * processes may append to one file (each batch is one append, which the OS keeps whole).
 */
import { appendFile, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import type { AttributeValue, HrTime } from "@opentelemetry/api";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace";

export type SpanKindName = "INTERNAL" | "SERVER" | "CLIENT" | "PRODUCER" | "CONSUMER";

/** One line of the file. Field names follow OTLP/JSON where it has one; attributes are plain JSON. */
export interface SpanRecord {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly kind: SpanKindName;
  /** `service.name` of the process that made the span. */
  readonly service: string;
  /** The instrumentation scope (`parley.grpc`, `parley.broker`, `parley.edge`). */
  readonly scope: string;
  /** Nanoseconds since the epoch, as a decimal string (beyond Number's precision). */
  readonly startTimeUnixNano: string;
  readonly endTimeUnixNano: string;
  readonly status: { readonly code: "UNSET" | "OK" | "ERROR"; readonly message?: string };
  readonly attributes: Readonly<Record<string, AttributeValue>>;
  readonly links: ReadonlyArray<{
    readonly traceId: string;
    readonly spanId: string;
    readonly attributes: Readonly<Record<string, AttributeValue>>;
  }>;
  readonly events: ReadonlyArray<{
    readonly name: string;
    readonly timeUnixNano: string;
    readonly attributes: Readonly<Record<string, AttributeValue>>;
  }>;
}

type ExportResult = Parameters<Parameters<SpanExporter["export"]>[1]>[0];

// ExportResultCode.SUCCESS and FAILED of @opentelemetry/core, which is the SDK's dependency, not ours.
const SUCCEEDED = { code: 0 } as ExportResult;
const failed = (error: Error) => ({ code: 1, error }) as ExportResult;

const KIND_NAMES: Readonly<Record<SpanKind, SpanKindName>> = {
  [SpanKind.INTERNAL]: "INTERNAL",
  [SpanKind.SERVER]: "SERVER",
  [SpanKind.CLIENT]: "CLIENT",
  [SpanKind.PRODUCER]: "PRODUCER",
  [SpanKind.CONSUMER]: "CONSUMER",
};

const STATUS_NAMES = {
  [SpanStatusCode.UNSET]: "UNSET",
  [SpanStatusCode.OK]: "OK",
  [SpanStatusCode.ERROR]: "ERROR",
} as const;

function nanos(time: HrTime): string {
  return (BigInt(time[0]) * 1_000_000_000n + BigInt(time[1])).toString();
}

function plain(attributes: Readonly<Record<string, AttributeValue | undefined>> | undefined) {
  const out: Record<string, AttributeValue> = {};
  for (const [key, value] of Object.entries(attributes ?? {})) if (value !== undefined) out[key] = value;
  return out;
}

export function toSpanRecord(span: ReadableSpan): SpanRecord {
  const context = span.spanContext();
  const parent = span.parentSpanContext;
  const service = span.resource.attributes["service.name"];
  return {
    traceId: context.traceId,
    spanId: context.spanId,
    ...(parent === undefined ? {} : { parentSpanId: parent.spanId }),
    name: span.name,
    kind: KIND_NAMES[span.kind],
    service: typeof service === "string" ? service : "unknown",
    scope: span.instrumentationScope.name,
    startTimeUnixNano: nanos(span.startTime),
    endTimeUnixNano: nanos(span.endTime),
    status: {
      code: STATUS_NAMES[span.status.code],
      ...(span.status.message === undefined || span.status.message === ""
        ? {}
        : { message: span.status.message }),
    },
    attributes: plain(span.attributes),
    links: span.links.map((link) => ({
      traceId: link.context.traceId,
      spanId: link.context.spanId,
      attributes: plain(link.attributes),
    })),
    events: span.events.map((event) => ({
      name: event.name,
      timeUnixNano: nanos(event.time),
      attributes: plain(event.attributes),
    })),
  };
}

/** A span exporter appending each batch to `path` as JSON lines (the folder is created). */
export function createSpanFileExporter(path: string): SpanExporter {
  let writes: Promise<unknown> = mkdir(dirname(path), { recursive: true });
  let stopped = false;
  return {
    export(spans, resultCallback) {
      if (stopped) {
        resultCallback(failed(new Error("the span file exporter is shut down")));
        return;
      }
      const text = spans.map((span) => `${JSON.stringify(toSpanRecord(span))}\n`).join("");
      // One append after the other: batches stay whole and in order.
      writes = writes
        .then(() => appendFile(path, text))
        .then(
          () => resultCallback(SUCCEEDED),
          (err: unknown) => resultCallback(failed(err instanceof Error ? err : new Error(String(err)))),
        );
    },
    async forceFlush() {
      await writes.catch(() => undefined);
    },
    async shutdown() {
      stopped = true;
      await writes.catch(() => undefined);
    },
  };
}

/** Reads a span file (a partly written last line is skipped). */
export function parseSpanFile(text: string): SpanRecord[] {
  const spans: SpanRecord[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    try {
      spans.push(JSON.parse(line) as SpanRecord);
    } catch {
      // The tail of a file another process is still appending to.
    }
  }
  return spans;
}
