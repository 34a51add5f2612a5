import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createSpanFileExporter, parseSpanFile } from "./span-file.ts";

let dir = "";
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "parley-span-file-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("the span file", () => {
  it("appends one JSON line per span: ids, parent, kind, times, status, attributes, links, events", async () => {
    const path = join(dir, "nested", "spans.jsonl");
    const provider = new TracerProvider({
      spanProcessors: [new SimpleSpanProcessor({ exporter: createSpanFileExporter(path) })],
    });
    const tracer = provider.getTracer("parley.test");
    const linked = tracer.startSpan("earlier", {}, ROOT_CONTEXT);
    linked.end();
    const parent = tracer.startSpan("parent", { kind: SpanKind.SERVER }, ROOT_CONTEXT);
    const child = tracer.startSpan(
      "child",
      {
        kind: SpanKind.PRODUCER,
        attributes: { "parley.message_id": "m1", "parley.message_ids": ["m1", "m2"], "parley.seq": 3 },
        links: [{ context: linked.spanContext(), attributes: { "parley.link.kind": "test" } }],
      },
      trace.setSpan(ROOT_CONTEXT, parent),
    );
    child.recordException(new Error("boom"));
    child.setStatus({ code: SpanStatusCode.ERROR, message: "boom" });
    child.end();
    parent.end();
    await provider.forceFlush();
    await provider.shutdown();

    const spans = parseSpanFile(readFileSync(path, "utf8"));
    expect(spans.map((s) => s.name)).toEqual(["earlier", "child", "parent"]);
    const [, written, root] = spans;
    expect(root?.parentSpanId).toBeUndefined();
    expect(written).toMatchObject({
      traceId: parent.spanContext().traceId,
      spanId: child.spanContext().spanId,
      parentSpanId: parent.spanContext().spanId,
      kind: "PRODUCER",
      scope: "parley.test",
      status: { code: "ERROR", message: "boom" },
      attributes: { "parley.message_id": "m1", "parley.message_ids": ["m1", "m2"], "parley.seq": 3 },
      links: [
        {
          traceId: linked.spanContext().traceId,
          spanId: linked.spanContext().spanId,
          attributes: { "parley.link.kind": "test" },
        },
      ],
    });
    expect(written?.events.map((e) => e.name)).toEqual(["exception"]);
    const start = BigInt(written?.startTimeUnixNano ?? "0");
    const end = BigInt(written?.endTimeUnixNano ?? "0");
    expect(start > 1_600_000_000_000_000_000n && end >= start).toBe(true);
    expect(written?.service).toMatch(/\S/);
  });

  it("reads a file whose last line is still being written", () => {
    const line = JSON.stringify({ traceId: "t", spanId: "s", name: "whole" });
    expect(parseSpanFile(`${line}\n{"traceId":"t","spa`).map((s) => s.name)).toEqual(["whole"]);
  });
});
