import { MessageChannel, Worker } from "node:worker_threads";
import type { SpanContext } from "@opentelemetry/api";
import { SpanKind, TraceFlags } from "@opentelemetry/api";
import type { DataPoint, Histogram } from "@opentelemetry/sdk-metrics";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachMeterProvider } from "./metrics.ts";
import type { StopTelemetry } from "./telemetry.ts";
import { startTelemetry } from "./telemetry.ts";
import type { ThreadTelemetryLink } from "./thread-telemetry.ts";
import { receiveThreadTelemetry } from "./thread-telemetry.ts";

class TestReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

const exporter = new InMemorySpanExporter();
const reader = new TestReader();
const provider = new MeterProvider({ readers: [reader] });
let stopTelemetry: StopTelemetry | undefined;
let detachMetrics: (() => void) | undefined;
let link: ThreadTelemetryLink | undefined;
let worker: Worker | undefined;
const parent: SpanContext = {
  traceId: "0af7651916cd43dd8448eb211c80319c",
  spanId: "b7ad6b7169203331",
  traceFlags: TraceFlags.SAMPLED,
  isRemote: true,
};

beforeAll(async () => {
  stopTelemetry = startTelemetry({
    serviceName: "parley-thread-telemetry-test",
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  detachMetrics = attachMeterProvider(provider);
  const channel = new MessageChannel();
  link = receiveThreadTelemetry(channel.port1, "tester");
  expect(link.settings).toEqual({
    thread: "tester",
    spans: "forward",
    serviceName: "parley-thread-telemetry-test",
  });
  worker = new Worker(new URL("./thread-telemetry.test-worker.ts", import.meta.url), {
    workerData: { port: channel.port2, settings: link.settings, parent },
    transferList: [channel.port2],
  });
  await new Promise<void>((resolve, reject) => {
    worker?.once("error", reject);
    worker?.once("message", () => resolve());
  });
});

afterAll(async () => {
  await worker?.terminate();
  link?.close();
  detachMetrics?.();
  await provider.shutdown();
  await stopTelemetry?.();
});

async function points(name: string): Promise<DataPoint<unknown>[]> {
  const { resourceMetrics } = await reader.collect();
  return resourceMetrics.scopeMetrics
    .flatMap((scope) => scope.metrics)
    .filter((metric) => metric.descriptor.name === name)
    .flatMap((metric) => metric.dataPoints as DataPoint<unknown>[]);
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const found = await probe();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("a worker thread's telemetry", () => {
  it("reaches the main thread's span processors as the span the worker ended, in the main thread's trace", async () => {
    const span = await eventually("the worker's span", async () =>
      exporter.getFinishedSpans().find((s) => s.name === "work in the worker"),
    );
    expect(span.spanContext().traceId).toBe(parent.traceId);
    expect(span.spanContext().spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(span.parentSpanContext?.spanId).toBe(parent.spanId);
    expect(span.kind).toBe(SpanKind.CONSUMER);
    expect(span.attributes).toEqual({ step: 1 });
    expect(span.events.map((e) => [e.name, e.attributes])).toEqual([["halfway", { at: "middle" }]]);
    expect(span.instrumentationScope.name).toBe("parley.thread_test");
    expect(span.resource.attributes["service.name"]).toBe("parley-thread-telemetry-test");
  });

  it("counts the worker's records once in the main thread's instruments", async () => {
    const [count] = await eventually("the worker's counter", async () => {
      const found = await points("parley.thread_test.count");
      return found.length > 0 ? found : undefined;
    });
    expect(count?.value).toBe(3);
    expect(count?.attributes).toEqual({ outcome: "ok" });
    const [duration] = await points("parley.thread_test.duration");
    const histogram = duration?.value as Histogram | undefined;
    expect(histogram?.count).toBe(1);
    expect(histogram?.sum).toBe(0.25);
  });

  it("reports the worker's gauges with the thread's name", async () => {
    const [level] = await eventually("the worker's gauge", async () => {
      const found = await points("parley.thread_test.level");
      return found.length > 0 ? found : undefined;
    });
    expect(level?.value).toBe(7);
    expect(level?.attributes).toEqual({ "parley.thread": "tester" });
  });

  it("sends what is left when the worker stops", async () => {
    await new Promise<void>((resolve) => {
      worker?.once("message", () => resolve());
      worker?.postMessage("stop");
    });
    const [count] = await points("parley.thread_test.count");
    expect(count?.value).toBe(3);
  });
});
