import type { Context, Link, SpanAttributes, SpanKind } from "@opentelemetry/api";
import { context, metrics, propagation } from "@opentelemetry/api";
import { startNodeSdk } from "@opentelemetry/sdk-node";
import type { Sampler, SamplingResult } from "@opentelemetry/sdk-trace";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  SamplingDecision,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace";
import { ConfigError, enumVar, loadConfig, optional, stringVar } from "./config.ts";
import { attachMeterProvider } from "./metrics.ts";
import { createSpanFileExporter } from "./span-file.ts";

type StartOptions = Extract<NonNullable<Parameters<typeof startNodeSdk>[0]>, { spanProcessors?: unknown }>;
type SpanProcessor = NonNullable<StartOptions["spanProcessors"]>[number];

export type TelemetryOptions = {
  /** `service.name` of every span, unless OTEL_SERVICE_NAME says otherwise. */
  readonly serviceName: string;
  /**
   * Where spans go, instead of OTLP (or nowhere): tests pass an in-memory exporter here. Production
   * leaves it unset.
   */
  readonly spanProcessors?: readonly SpanProcessor[];
  /**
   * Whether this thread's instruments go out over OTLP when the environment asks for it (default
   * true). A worker thread says false: it forwards its records to the main thread's instruments
   * (lib/thread-telemetry.ts), which export them once.
   */
  readonly exportMetrics?: boolean;
};

/** Flushes and stops telemetry; call it last on shutdown so the final spans leave. */
export type StopTelemetry = () => Promise<void>;

/**
 * A span started with this attribute set to `true` is sampled whatever the ratio says (a send with
 * `force_trace`); its children follow it through the parent-based sampler, in every service.
 */
export const FORCE_TRACE_ATTRIBUTE = "parley.force_trace";

/**
 * The W3C traceparent of `ctx`'s span (the active one by default), for the events and requests a
 * piece of work hands on so the next hop joins its trace; its flags say whether it is sampled.
 * Empty when there is no span.
 */
export function currentTraceparent(ctx: Context = context.active()): string {
  const carrier: { traceparent?: string } = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent ?? "";
}

const SAMPLERS = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio",
] as const;

const samplerSpec = {
  sampler: enumVar("OTEL_TRACES_SAMPLER", SAMPLERS, { default: "parentbased_always_on" }),
  ratio: optional(stringVar("OTEL_TRACES_SAMPLER_ARG")),
};

/**
 * The sampler of every process: the standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
 * (default parentbased_always_on, as the SDK's), under a rule that samples any span started with
 * `parley.force_trace=true`. Throws a ConfigError for an unknown sampler or a ratio outside [0, 1].
 */
export function createSampler(env: Readonly<Record<string, string | undefined>> = process.env): Sampler {
  const config = loadConfig(samplerSpec, env);
  const ratio = config.ratio === undefined ? 1 : Number(config.ratio);
  if (!(ratio >= 0 && ratio <= 1)) {
    throw new ConfigError([
      `OTEL_TRACES_SAMPLER_ARG must be a sampling ratio between 0 and 1, got '${config.ratio}'`,
    ]);
  }
  const base: Record<(typeof SAMPLERS)[number], () => Sampler> = {
    always_on: () => new AlwaysOnSampler(),
    always_off: () => new AlwaysOffSampler(),
    traceidratio: () => new TraceIdRatioBasedSampler(ratio),
    parentbased_always_on: () => new ParentBasedSampler({ root: new AlwaysOnSampler() }),
    parentbased_always_off: () => new ParentBasedSampler({ root: new AlwaysOffSampler() }),
    parentbased_traceidratio: () => new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) }),
  };
  return forceTraceSampler(base[config.sampler]());
}

/** Samples spans carrying `parley.force_trace=true` at start; asks `delegate` about every other. */
export function forceTraceSampler(delegate: Sampler): Sampler {
  return {
    shouldSample(
      ctx: Context,
      traceId: string,
      spanName: string,
      spanKind: SpanKind,
      attributes: SpanAttributes,
      links: Link[],
    ): SamplingResult {
      if (attributes[FORCE_TRACE_ATTRIBUTE] === true) {
        return { decision: SamplingDecision.RECORD_AND_SAMPLED };
      }
      return delegate.shouldSample(ctx, traceId, spanName, spanKind, attributes, links);
    },
    toString: () => `ForceTrace{${delegate.toString()}}`,
  };
}

// Spans are still made when nothing is exported, so every log line and outgoing call carries a
// trace id that ties one request together across services; this processor simply drops them.
const dropSpans: SpanProcessor = {
  onStart() {},
  onEnd() {},
  forceFlush: async () => {},
  shutdown: async () => {},
};

const traceFileSpec = { traceFile: optional(stringVar("PARLEY_TRACE_FILE")) };

/** How often spans go to PARLEY_TRACE_FILE: soon enough for `npm run trace` right after a send. */
const TRACE_FILE_DELAY_MS = 500;

let running: StopTelemetry | undefined;
/** The running telemetry's span processors of ours (tests' in-memory ones, the trace file's). */
let processorsOfOurs: readonly SpanProcessor[] = [];
let runningServiceName = "";

/**
 * What a worker thread's telemetry should do, given this thread's. `spans`: `off` when telemetry
 * is not running here (no spans are made here either); `forward` to this thread's processors of
 * ours (an in-memory exporter, the trace file: one file, one test); `own` when spans leave over
 * OTLP or nowhere, which the worker's SDK does on its own from the same environment.
 */
export function telemetryForThreads(): {
  readonly spans: "off" | "forward" | "own";
  readonly serviceName: string;
} {
  if (running === undefined) return { spans: "off", serviceName: "" };
  return { spans: processorsOfOurs.length > 0 ? "forward" : "own", serviceName: runningServiceName };
}

/** This thread's span processors of ours, which take a worker thread's forwarded spans. */
export function spanProcessorsForThreads(): readonly SpanProcessor[] {
  return processorsOfOurs;
}

/**
 * Starts the OpenTelemetry SDK once per process: W3C trace context propagation, and export over
 * OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or its traces or metrics variant) is set. The
 * protocol follows OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, grpc or http/json), as
 * sdk-node reads the standard OTEL_* variables itself (OTEL_METRIC_EXPORT_INTERVAL too). Metrics
 * exported over OTLP are the same instruments the Prometheus endpoint serves (lib/metrics.ts).
 * Sampling follows OTEL_TRACES_SAMPLER(_ARG), plus force_trace (`createSampler`). Logs are not
 * exported: they go to stdout as JSON.
 *
 * PARLEY_TRACE_FILE=<path> writes spans to a local JSON-lines file instead (`npm run trace`), for
 * a machine without a collector; it cannot be combined with OTLP trace export (the SDK builds its
 * OTLP span exporter only when it is given no span processor of ours).
 */
export function startTelemetry(options: TelemetryOptions): StopTelemetry {
  if (running !== undefined) {
    return running;
  }
  const env = process.env;
  const exportingTraces = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
  const exportingMetrics =
    options.exportMetrics !== false &&
    Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
  const sampler = createSampler(env);
  const { traceFile } = loadConfig(traceFileSpec, env);
  if (traceFile !== undefined && exportingTraces && options.spanProcessors === undefined) {
    throw new ConfigError([
      "PARLEY_TRACE_FILE cannot be combined with OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: unset one (the file is for machines without a collector)",
    ]);
  }
  const fileProcessors =
    traceFile === undefined
      ? []
      : [
          new BatchSpanProcessor({
            exporter: createSpanFileExporter(traceFile),
            scheduledDelayMillis: TRACE_FILE_DELAY_MS,
            // A 1,000-member fan-out makes many spans at once; the file takes them in bigger batches.
            maxQueueSize: 16_384,
            maxExportBatchSize: 2_048,
          }),
        ];
  const spanProcessors =
    options.spanProcessors !== undefined
      ? [...options.spanProcessors, ...fileProcessors]
      : traceFile !== undefined
        ? fileProcessors
        : exportingTraces
          ? undefined
          : [dropSpans];
  const sdk = startNodeSdk({
    // The SDK's own diagnostics print plain text; keep them to warnings so stdout stays JSON.
    logLevel: env.OTEL_LOG_LEVEL ?? "warn",
    ...(env.OTEL_SERVICE_NAME ? {} : { resourceAttributes: { "service.name": options.serviceName } }),
    logRecordProcessors: [],
    sampler,
    ...(spanProcessors === undefined ? {} : { spanProcessors }),
    // Without readers of ours, the SDK makes its OTLP reader from the environment.
    ...(exportingMetrics ? {} : { metricReaders: [] }),
  });
  // The provider the SDK registered (its OTLP reader): Parley's instruments record into it too.
  const detachMetrics = exportingMetrics ? attachMeterProvider(metrics.getMeterProvider()) : () => {};
  processorsOfOurs = [...(options.spanProcessors ?? []), ...fileProcessors];
  runningServiceName = options.serviceName;
  const stop: StopTelemetry = async () => {
    if (running === stop) {
      running = undefined;
      processorsOfOurs = [];
    }
    detachMetrics();
    await sdk.shutdown();
  };
  running = stop;
  return stop;
}
