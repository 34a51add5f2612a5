// OTLP metric export: with an OTLP metrics endpoint set, the SDK's own MeterProvider (built from the
// environment) gets Parley's instruments too, alongside the Prometheus endpoint. A local HTTP server
// stands in for the collector (http/json, so the test can read what arrives).
import type { Server } from "node:http";
import { createServer } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getMeter } from "./metrics.ts";
import type { StopTelemetry } from "./telemetry.ts";
import { startTelemetry } from "./telemetry.ts";

const bodies: string[] = [];
let collector: Server | undefined;
let stop: StopTelemetry | undefined;
const saved = { ...process.env };

beforeAll(async () => {
  collector = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => {
      body += chunk.toString("utf8");
    });
    req.on("end", () => {
      bodies.push(`${req.url} ${body}`);
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
  });
  const server = collector;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  process.env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = `http://127.0.0.1:${port}/v1/metrics`;
  process.env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL = "http/json";
  process.env.OTEL_METRIC_EXPORT_INTERVAL = "200";
  stop = startTelemetry({ serviceName: "parley-otlp-test" });
});

afterAll(async () => {
  await stop?.();
  await new Promise<void>((resolve) =>
    collector === undefined ? resolve() : collector.close(() => resolve()),
  );
  for (const name of [
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_METRIC_EXPORT_INTERVAL",
  ]) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
});

describe("OTLP metrics", () => {
  it("exports Parley's instruments, made before or after the SDK started, with the process's service name", async () => {
    getMeter("parley.test").createCounter("parley.test.exported").add(3, { "parley.test.kind": "otlp" });
    const deadline = Date.now() + 10_000;
    while (!bodies.some((b) => b.includes("parley.test.exported"))) {
      if (Date.now() > deadline)
        throw new Error(`no export named the counter; got ${bodies.length} requests`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const body = bodies.find((b) => b.includes("parley.test.exported")) ?? "";
    expect(body.startsWith("/v1/metrics ")).toBe(true);
    expect(body).toContain("parley-otlp-test");
    expect(body).toContain("parley.test.kind");
  });
});
