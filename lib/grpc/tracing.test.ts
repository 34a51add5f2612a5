import { context, propagation, SpanKind, SpanStatusCode, TraceFlags, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { Status } from "nice-grpc";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { StopTelemetry } from "../telemetry.ts";
import { startTelemetry } from "../telemetry.ts";
import { inBatchItemSpan } from "./tracing.ts";

const exporter = new InMemorySpanExporter();
const processor = new SimpleSpanProcessor({ exporter });
let stopTelemetry: StopTelemetry;
const savedSampler = process.env.OTEL_TRACES_SAMPLER;
beforeAll(() => {
  // A sampled parent's children are recorded, an unsampled one's are not, whatever the environment says.
  process.env.OTEL_TRACES_SAMPLER = "parentbased_always_on";
  stopTelemetry = startTelemetry({ serviceName: "tracing-test", spanProcessors: [processor] });
});
afterAll(async () => {
  await stopTelemetry();
  if (savedSampler === undefined) delete process.env.OTEL_TRACES_SAMPLER;
  else process.env.OTEL_TRACES_SAMPLER = savedSampler;
});
afterEach(() => exporter.reset());

/** The spans ended so far (the processor exports each one asynchronously). */
async function finishedSpans() {
  await processor.forceFlush();
  return exporter.getFinishedSpans();
}

const tracer = trace.getTracer("tracing-test");
const PATH = "/parley.history.v1.HistoryService/RecordAcknowledgements";

/** A span of another process (its traceparent is all we get), and the batch call's span active. */
function callerAndBatch() {
  const caller = tracer.startSpan("caller");
  const carrier: { traceparent?: string } = {};
  propagation.inject(trace.setSpan(context.active(), caller), carrier);
  caller.end();
  const batch = tracer.startSpan("batch", { root: true });
  return { caller, traceparent: carrier.traceparent ?? "", batch };
}

describe("inBatchItemSpan", () => {
  it("runs an item in a SERVER span of its own under the item's traceparent, linked to the batch call's span", async () => {
    const { caller, traceparent, batch } = callerAndBatch();
    let activeInItem: string | undefined;
    const result = await context.with(trace.setSpan(context.active(), batch), () =>
      inBatchItemSpan(
        { path: PATH, name: "delivered", traceparent, attributes: { "parley.conversation_id": "c1" } },
        async () => {
          activeInItem = trace.getActiveSpan()?.spanContext().spanId;
          return "recorded";
        },
        () => ({ code: Status.OK }),
      ),
    );
    batch.end();
    expect(result).toBe("recorded");
    const item = (await finishedSpans()).find((s) => s.name.endsWith(" delivered"));
    expect(item?.name).toBe("parley.history.v1.HistoryService/RecordAcknowledgements delivered");
    expect(item?.kind).toBe(SpanKind.SERVER);
    expect(item?.spanContext().traceId).toBe(caller.spanContext().traceId);
    expect(item?.parentSpanContext?.spanId).toBe(caller.spanContext().spanId);
    expect(activeInItem).toBe(item?.spanContext().spanId);
    expect(item?.links.map((l) => [l.context.spanId, l.attributes])).toEqual([
      [batch.spanContext().spanId, { "parley.link.kind": "batch" }],
    ]);
    expect(item?.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.service": "parley.history.v1.HistoryService",
      "rpc.method": "RecordAcknowledgements",
      "rpc.grpc.status_code": Status.OK,
      "parley.conversation_id": "c1",
      "parley.batch_item": true,
    });
    expect(item?.status.code).not.toBe(SpanStatusCode.ERROR);
  });

  it("marks the item's span an error for a server fault only, as a call's server span", async () => {
    for (const code of [Status.NOT_FOUND, Status.INTERNAL]) {
      const { traceparent, batch } = callerAndBatch();
      await context.with(trace.setSpan(context.active(), batch), () =>
        inBatchItemSpan(
          { path: PATH, name: "read", traceparent },
          async () => "failed",
          () => ({ code, message: "why" }),
        ),
      );
      batch.end();
    }
    const items = (await finishedSpans()).filter((s) => s.name.endsWith(" read"));
    expect(items.map((s) => [s.attributes["rpc.grpc.status_code"], s.status.code])).toEqual([
      [Status.NOT_FOUND, SpanStatusCode.UNSET],
      [Status.INTERNAL, SpanStatusCode.ERROR],
    ]);
  });

  it.each([
    ["without a traceparent", ""],
    ["whose traceparent the propagator refuses (zero ids)", `00-${"0".repeat(32)}-${"0".repeat(16)}-01`],
  ])("runs an item %s in the batch call's context, with no span of its own", async (_, traceparent) => {
    const { batch } = callerAndBatch();
    let activeInItem: string | undefined;
    await context.with(trace.setSpan(context.active(), batch), () =>
      inBatchItemSpan(
        { path: PATH, name: "delivered", traceparent },
        async () => {
          activeInItem = trace.getActiveSpan()?.spanContext().spanId;
        },
        () => ({ code: Status.OK }),
      ),
    );
    batch.end();
    expect(activeInItem).toBe(batch.spanContext().spanId);
    expect((await finishedSpans()).map((s) => s.name)).toEqual(["caller", "batch"]);
  });

  it("links the item's span to the batch call's span only when that one is sampled", async () => {
    const { traceparent } = callerAndBatch();
    const unsampledBatch = trace.wrapSpanContext({
      traceId: "3".repeat(32),
      spanId: "4".repeat(16),
      traceFlags: TraceFlags.NONE,
    });
    await context.with(trace.setSpan(context.active(), unsampledBatch), () =>
      inBatchItemSpan(
        { path: PATH, name: "delivered", traceparent },
        async () => undefined,
        () => ({ code: Status.OK }),
      ),
    );
    const item = (await finishedSpans()).find((s) => s.name.endsWith(" delivered"));
    expect(item).toBeDefined();
    expect(item?.links).toEqual([]);
  });

  it("ends the item's span when the item throws, and passes the error on", async () => {
    const { traceparent } = callerAndBatch();
    await expect(
      inBatchItemSpan(
        { path: PATH, name: "delivered", traceparent },
        async () => {
          throw new Error("boom");
        },
        () => ({ code: Status.OK }),
      ),
    ).rejects.toThrow("boom");
    const item = (await finishedSpans()).find((s) => s.name.endsWith(" delivered"));
    expect(item?.attributes["rpc.grpc.status_code"]).toBe(Status.UNKNOWN);
    expect(item?.status.code).toBe(SpanStatusCode.ERROR);
  });
});
