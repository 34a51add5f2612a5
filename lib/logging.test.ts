import { trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { captureLogs } from "./grpc/test-support.ts";
import type { StopTelemetry } from "./telemetry.ts";
import { startTelemetry } from "./telemetry.ts";

let stop: StopTelemetry;
beforeAll(() => {
  stop = startTelemetry({ serviceName: "logging-test" });
});
afterAll(async () => {
  await stop();
});

describe("createLogger", () => {
  it("writes JSON lines with the level name, logger name and time", () => {
    const { logger, lines } = captureLogs("info");
    logger.info({ user: "alice" }, "hello");
    logger.debug("hidden below the level");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: "info", name: "test", msg: "hello", user: "alice" });
    expect(Number.isNaN(Date.parse(String(lines[0]?.time)))).toBe(false);
    expect(lines[0]).not.toHaveProperty("trace_id");
  });

  it("adds trace_id and span_id of the active span", () => {
    const { logger, lines } = captureLogs("info");
    const ids = trace.getTracer("test").startActiveSpan("work", (span) => {
      logger.info("inside");
      span.end();
      return span.spanContext();
    });
    expect(ids.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(lines[0]).toMatchObject({ trace_id: ids.traceId, span_id: ids.spanId });
  });

  it("keeps the trace across awaits", async () => {
    const { logger, lines } = captureLogs("info");
    const traceId = await trace.getTracer("test").startActiveSpan("work", async (span) => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      logger.info("after await");
      span.end();
      return span.spanContext().traceId;
    });
    expect(lines[0]?.trace_id).toBe(traceId);
  });
});

describe("startTelemetry", () => {
  it("starts once per process", () => {
    expect(startTelemetry({ serviceName: "again" })).toBe(stop);
  });
});
