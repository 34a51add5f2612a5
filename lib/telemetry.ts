import { startNodeSdk } from "@opentelemetry/sdk-node";

type StartOptions = Extract<NonNullable<Parameters<typeof startNodeSdk>[0]>, { spanProcessors?: unknown }>;
type SpanProcessor = NonNullable<StartOptions["spanProcessors"]>[number];

export type TelemetryOptions = {
  /** `service.name` of every span, unless OTEL_SERVICE_NAME says otherwise. */
  readonly serviceName: string;
};

/** Flushes and stops telemetry; call it last on shutdown so the final spans leave. */
export type StopTelemetry = () => Promise<void>;

// Spans are still made when nothing is exported, so every log line and outgoing call carries a
// trace id that ties one request together across services; this processor simply drops them.
const dropSpans: SpanProcessor = {
  onStart() {},
  onEnd() {},
  forceFlush: async () => {},
  shutdown: async () => {},
};

let running: StopTelemetry | undefined;

/**
 * Starts the OpenTelemetry SDK once per process: W3C trace context propagation, and export over
 * OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or its traces variant) is set. The protocol follows
 * OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, grpc or http/json), as sdk-node reads the
 * standard OTEL_* variables itself. Logs are not exported: they go to stdout as JSON.
 */
export function startTelemetry(options: TelemetryOptions): StopTelemetry {
  if (running !== undefined) {
    return running;
  }
  const env = process.env;
  const exporting = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
  const sdk = startNodeSdk({
    // The SDK's own diagnostics print plain text; keep them to warnings so stdout stays JSON.
    logLevel: env.OTEL_LOG_LEVEL ?? "warn",
    ...(env.OTEL_SERVICE_NAME ? {} : { resourceAttributes: { "service.name": options.serviceName } }),
    logRecordProcessors: [],
    ...(exporting ? {} : { spanProcessors: [dropSpans], metricReaders: [] }),
  });
  const stop: StopTelemetry = async () => {
    if (running === stop) {
      running = undefined;
    }
    await sdk.shutdown();
  };
  running = stop;
  return stop;
}
