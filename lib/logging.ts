import { isSpanContextValid, trace } from "@opentelemetry/api";
import type { DestinationStream, Level, Logger as PinoLogger } from "pino";
import { pino } from "pino";

export type Logger = PinoLogger;
export type LogLevel = Level | "silent";

export const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** The trace and span of the active OpenTelemetry span, for joining a log line to its trace. */
export function traceFields(): { trace_id?: string; span_id?: string } {
  const spanContext = trace.getActiveSpan()?.spanContext();
  if (spanContext === undefined || !isSpanContextValid(spanContext)) {
    return {};
  }
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}

/**
 * A JSON logger for one process or component. Every line carries the active trace_id/span_id, so
 * the log of one RPC can be found from its trace and back. `destination` is for tests.
 */
export function createLogger(
  name: string,
  level: LogLevel = "info",
  destination?: DestinationStream,
): Logger {
  return pino(
    {
      name,
      level,
      // Level names rather than numbers: log pipelines and humans both read them without a table.
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      mixin: traceFields,
    },
    destination,
  );
}
