import type { DataPoint, Histogram } from "@opentelemetry/sdk-metrics";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import { afterEach, describe, expect, it } from "vitest";
import { createEmbeddedBroker } from "./broker/embedded-broker.ts";
import { createLogger } from "./logging.ts";
import {
  attachMeterProvider,
  countRejections,
  getMeter,
  observeBrokerBacklog,
  startMetricsEndpoint,
} from "./metrics.ts";
import { createMemoryRateLimiter } from "./rate-limit.ts";

class TestReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A provider with a reader we collect from, attached until the test ends. */
function attachedReader(): { reader: TestReader; detach: () => void } {
  const reader = new TestReader();
  const provider = new MeterProvider({ readers: [reader] });
  const detach = attachMeterProvider(provider);
  cleanups.push(async () => {
    detach();
    await provider.shutdown();
  });
  return { reader, detach };
}

async function points(reader: TestReader, name: string): Promise<DataPoint<unknown>[]> {
  const { resourceMetrics } = await reader.collect();
  return resourceMetrics.scopeMetrics
    .flatMap((scope) => scope.metrics)
    .filter((metric) => metric.descriptor.name === name)
    .flatMap((metric) => metric.dataPoints as DataPoint<unknown>[]);
}

async function sum(reader: TestReader, name: string, attributes: Record<string, unknown> = {}) {
  const matching = (await points(reader, name)).filter((p) =>
    Object.entries(attributes).every(([k, v]) => p.attributes[k] === v),
  );
  return matching.reduce((total, p) => total + (p.value as number), 0);
}

describe("instruments", () => {
  it("record into every provider attached, also those attached after the instrument was made", async () => {
    const counter = getMeter("test.scope").createCounter("test.counted");
    counter.add(5); // nobody listens yet: dropped
    const first = attachedReader();
    counter.add(1, { outcome: "a" });
    const second = attachedReader();
    counter.add(2, { outcome: "a" });
    expect(await sum(first.reader, "test.counted")).toBe(3);
    expect(await sum(second.reader, "test.counted")).toBe(2);

    first.detach();
    counter.add(10, { outcome: "a" });
    expect(await sum(first.reader, "test.counted")).toBe(3);
    expect(await sum(second.reader, "test.counted")).toBe(12);
  });

  it("are the same instrument when asked for twice, so services may make theirs at every start", async () => {
    const { reader } = attachedReader();
    const meter = getMeter("test.scope");
    const histogram = meter.createHistogram("test.latency", {
      unit: "s",
      advice: { explicitBucketBoundaries: [0.1, 1] },
    });
    expect(meter.createHistogram("test.latency")).toBe(histogram);
    histogram.record(0.05);
    histogram.record(0.5);
    histogram.record(5);
    const [point] = await points(reader, "test.latency");
    const value = point?.value as Histogram;
    expect(value.count).toBe(3);
    expect(value.buckets).toEqual({ boundaries: [0.1, 1], counts: [1, 1, 1] });
  });

  it("observe gauges through every registered callback until it is removed", async () => {
    const { reader } = attachedReader();
    const gauge = getMeter("test.scope").createObservableGauge("test.open");
    const open = { a: 3, b: 4 };
    const a = (result: { observe(value: number, attributes?: Record<string, string>): void }) =>
      result.observe(open.a, { part: "a" });
    gauge.addCallback(a);
    gauge.addCallback(async (result) => result.observe(open.b, { part: "b" }));
    expect(await sum(reader, "test.open")).toBe(7);
    gauge.removeCallback(a);
    open.a = 30;
    open.b = 40;
    // The SDK keeps reporting a series' last value once nobody observes it (cumulative state).
    expect(await sum(reader, "test.open", { part: "a" })).toBe(3);
    expect(await sum(reader, "test.open", { part: "b" })).toBe(40);
  });
});

describe("shared ports", () => {
  it("countRejections counts refusals by limiter name, and nothing else", async () => {
    const { reader } = attachedReader();
    const inner = createMemoryRateLimiter({ burst: 2, perSecond: 0.001 });
    cleanups.push(() => inner.close());
    const limiter = countRejections(inner, "test_limit");
    const decisions = [];
    for (let i = 0; i < 5; i++) decisions.push((await limiter.take("user/device")).allowed);
    expect(decisions).toEqual([true, true, false, false, false]);
    expect(
      await sum(reader, "parley.rate_limit.rejections", { "parley.rate_limit.name": "test_limit" }),
    ).toBe(3);
  });

  it("observeBrokerBacklog reports each subscription once per broker, until the last user stops", async () => {
    const { reader } = attachedReader();
    const broker = await createEmbeddedBroker({
      path: ":memory:",
      logger: createLogger("metrics-test", "silent"),
    });
    cleanups.push(() => broker.close());
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    await broker.subscribe("test.backlog", { subscription: "slow" }, () => gate);
    // Before the broker closes (cleanups run last first): close() waits for running handlers.
    cleanups.push(release);
    for (let i = 0; i < 4; i++) {
      await broker.publish("test.backlog", { key: `k${i}`, payload: new Uint8Array([i]) });
    }
    const stopOne = observeBrokerBacklog(broker);
    const stopTwo = observeBrokerBacklog(broker);
    const backlog = () =>
      sum(reader, "parley.broker.backlog", {
        "messaging.destination.name": "test.backlog",
        "messaging.destination.subscription.name": "slow",
      });
    expect(await backlog()).toBe(4);
    stopOne();
    await broker.publish("test.backlog", { key: "k", payload: new Uint8Array([9]) });
    expect(await backlog()).toBe(5);
    stopTwo();
    await broker.publish("test.backlog", { key: "k", payload: new Uint8Array([10]) });
    // No longer observed: the series keeps its last value (the SDK's cumulative state), not 6.
    expect(await backlog()).toBe(5);
  });
});

describe("the Prometheus endpoint", () => {
  it("serves every instrument in the text format at /metrics, and nothing elsewhere", async () => {
    const endpoint = await startMetricsEndpoint({ host: "127.0.0.1", port: 0 });
    cleanups.push(() => endpoint.close());
    expect(endpoint.url).toBe(`http://127.0.0.1:${endpoint.port}/metrics`);
    getMeter("test.scope").createCounter("test.scraped", { description: "what a test counted" }).add(2, {
      "test.kind": "x",
    });
    const response = await fetch(endpoint.url);
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain("# HELP test_scraped_total what a test counted");
    expect(text).toContain('test_scraped_total{test_kind="x"} 2');
    // The process's own gauges are there too.
    expect(text).toMatch(/^process_memory_usage \d+/m);
    expect(text).not.toContain("target_info");
    expect((await fetch(new URL("/other", endpoint.url))).status).toBe(404);

    await endpoint.close();
    await expect(fetch(endpoint.url)).rejects.toThrow();
  });

  it("fails to start on a port that is taken", async () => {
    const first = await startMetricsEndpoint({ host: "127.0.0.1", port: 0 });
    cleanups.push(() => first.close());
    await expect(startMetricsEndpoint({ host: "127.0.0.1", port: first.port })).rejects.toThrow(/EADDRINUSE/);
  });
});
