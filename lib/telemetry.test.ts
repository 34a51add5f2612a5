import { ROOT_CONTEXT, SpanKind, TraceFlags, trace } from "@opentelemetry/api";
import { SamplingDecision } from "@opentelemetry/sdk-trace";
import { describe, expect, it } from "vitest";
import { ConfigError } from "./config.ts";
import { createSampler, FORCE_TRACE_ATTRIBUTE, startTelemetry } from "./telemetry.ts";

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";

function decide(env: Record<string, string>, attributes = {}, parentSampled?: boolean) {
  const ctx =
    parentSampled === undefined
      ? ROOT_CONTEXT
      : trace.setSpanContext(ROOT_CONTEXT, {
          traceId: TRACE_ID,
          spanId: "00f067aa0ba902b7",
          traceFlags: parentSampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
          isRemote: true,
        });
  return createSampler(env).shouldSample(ctx, TRACE_ID, "span", SpanKind.SERVER, attributes, []).decision;
}

describe("createSampler", () => {
  it("honours OTEL_TRACES_SAMPLER and its ratio, parent-based", () => {
    const none = { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0" };
    expect(decide(none)).toBe(SamplingDecision.NOT_RECORD);
    expect(decide({ ...none, OTEL_TRACES_SAMPLER_ARG: "1" })).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    // A child follows its parent whatever the ratio.
    expect(decide(none, {}, true)).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide({ ...none, OTEL_TRACES_SAMPLER_ARG: "1" }, {}, false)).toBe(SamplingDecision.NOT_RECORD);
    // The SDK's default: parent-based, always on.
    expect(decide({})).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide({ OTEL_TRACES_SAMPLER: "always_off" })).toBe(SamplingDecision.NOT_RECORD);
  });

  it("samples a span started with parley.force_trace", () => {
    const none = { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0" };
    expect(decide(none, { [FORCE_TRACE_ATTRIBUTE]: true })).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide(none, { [FORCE_TRACE_ATTRIBUTE]: false })).toBe(SamplingDecision.NOT_RECORD);
  });

  it("refuses an unknown sampler or a ratio outside [0, 1]", () => {
    expect(() => createSampler({ OTEL_TRACES_SAMPLER: "sometimes" })).toThrow(ConfigError);
    expect(() => createSampler({ OTEL_TRACES_SAMPLER_ARG: "1.5" })).toThrow(/OTEL_TRACES_SAMPLER_ARG/);
    expect(() => createSampler({ OTEL_TRACES_SAMPLER_ARG: "x" })).toThrow(ConfigError);
  });
});

describe("startTelemetry", () => {
  it("refuses PARLEY_TRACE_FILE together with OTLP trace export, before starting anything", () => {
    const saved = {
      file: process.env.PARLEY_TRACE_FILE,
      otlp: process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    };
    process.env.PARLEY_TRACE_FILE = "/tmp/parley-never-written.jsonl";
    process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "http://127.0.0.1:4318/v1/traces";
    try {
      expect(() => startTelemetry({ serviceName: "conflict-test" })).toThrow(
        /PARLEY_TRACE_FILE cannot be combined/,
      );
    } finally {
      for (const [name, value] of [
        ["PARLEY_TRACE_FILE", saved.file],
        ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", saved.otlp],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });
});
