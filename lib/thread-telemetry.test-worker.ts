// The worker of lib/thread-telemetry.test.ts: starts thread telemetry, then records a span (child
// of the main thread's), a counter, a histogram and a gauge, and stops when asked.
import type { MessagePort } from "node:worker_threads";
import { parentPort, workerData } from "node:worker_threads";
import type { SpanContext } from "@opentelemetry/api";
import { context, SpanKind, trace } from "@opentelemetry/api";
import { getMeter } from "./metrics.ts";
import type { ThreadTelemetrySettings } from "./thread-telemetry.ts";
import { startThreadTelemetry } from "./thread-telemetry.ts";

const data = workerData as { port: MessagePort; settings: ThreadTelemetrySettings; parent: SpanContext };
const stop = startThreadTelemetry(data.port, data.settings);
const meter = getMeter("parley.thread_test");
meter.createCounter("parley.thread_test.count").add(3, { outcome: "ok" });
meter.createHistogram("parley.thread_test.duration", { unit: "s" }).record(0.25);
meter.createObservableGauge("parley.thread_test.level").addCallback((result) => result.observe(7));
const parent = trace.setSpanContext(context.active(), data.parent);
const span = trace
  .getTracer("parley.thread_test")
  .startSpan("work in the worker", { kind: SpanKind.CONSUMER, attributes: { step: 1 } }, parent);
span.addEvent("halfway", { at: "middle" });
span.end();
parentPort?.on("message", async (message: string) => {
  if (message !== "stop") return;
  await stop();
  parentPort?.postMessage("stopped");
});
parentPort?.postMessage("ready");
