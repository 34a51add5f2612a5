import { describe, expect, it } from "vitest";
import {
  boolVar,
  ConfigError,
  durationVar,
  enumVar,
  intVar,
  loadConfig,
  optional,
  portVar,
  stringVar,
  urlVar,
} from "./config.ts";

const spec = {
  host: stringVar("PARLEY_SENDER_HOST", { default: "127.0.0.1" }),
  port: portVar("PARLEY_SENDER_PORT", { default: 50051 }),
  workers: intVar("PARLEY_SENDER_WORKERS", { default: 4, min: 1, max: 64 }),
  tracing: boolVar("PARLEY_FORCE_TRACE", { default: false }),
  level: enumVar("PARLEY_LOG_LEVEL", ["debug", "info", "warn"], { default: "info" }),
  otlp: optional(urlVar("PARLEY_OTLP_URL", { protocols: ["http", "https"] })),
  timeout: durationVar("PARLEY_SEND_TIMEOUT", { default: 5000 }),
};

function problems(run: () => unknown): readonly string[] {
  try {
    run();
  } catch (err) {
    if (err instanceof ConfigError) {
      return err.problems;
    }
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig", () => {
  it("uses defaults when nothing is set, and treats empty values as unset", () => {
    const config = loadConfig(spec, { PARLEY_SENDER_PORT: "" });
    expect(config).toEqual({
      host: "127.0.0.1",
      port: 50051,
      workers: 4,
      tracing: false,
      level: "info",
      otlp: undefined,
      timeout: 5000,
    });
  });

  it("parses every kind of variable", () => {
    const config = loadConfig(spec, {
      PARLEY_SENDER_HOST: "0.0.0.0",
      PARLEY_SENDER_PORT: "0",
      PARLEY_SENDER_WORKERS: "64",
      PARLEY_FORCE_TRACE: "YES",
      PARLEY_LOG_LEVEL: "debug",
      PARLEY_OTLP_URL: "http://collector:4318",
      PARLEY_SEND_TIMEOUT: "1.5m",
    });
    expect(config).toEqual({
      host: "0.0.0.0",
      port: 0,
      workers: 64,
      tracing: true,
      level: "debug",
      otlp: "http://collector:4318",
      timeout: 90_000,
    });
    // The inferred types are the parsed ones, not strings.
    const port: number = config.port;
    const level: "debug" | "info" | "warn" = config.level;
    const otlp: string | undefined = config.otlp;
    expect([port, level, otlp]).toHaveLength(3);
  });

  it("names the variable, what was expected and what it got", () => {
    expect(problems(() => loadConfig(spec, { PARLEY_SENDER_PORT: "abc" }))).toEqual([
      "PARLEY_SENDER_PORT must be an integer port 0-65535, got 'abc'",
    ]);
    expect(problems(() => loadConfig(spec, { PARLEY_SENDER_PORT: "65536" }))).toEqual([
      "PARLEY_SENDER_PORT must be an integer port 0-65535, got '65536'",
    ]);
    expect(problems(() => loadConfig(spec, { PARLEY_SEND_TIMEOUT: "5" }))).toEqual([
      "PARLEY_SEND_TIMEOUT must be a duration like 500ms, 5s, 2m or 1h, got '5'",
    ]);
    expect(problems(() => loadConfig(spec, { PARLEY_OTLP_URL: "ftp://x" }))).toEqual([
      "PARLEY_OTLP_URL must be an absolute URL with scheme http: or https:, got 'ftp://x'",
    ]);
  });

  it("reports every bad variable at once", () => {
    const found = problems(() =>
      loadConfig(spec, {
        PARLEY_SENDER_PORT: "abc",
        PARLEY_SENDER_WORKERS: "0",
        PARLEY_FORCE_TRACE: "maybe",
        PARLEY_LOG_LEVEL: "loud",
      }),
    );
    expect(found).toEqual([
      "PARLEY_SENDER_PORT must be an integer port 0-65535, got 'abc'",
      "PARLEY_SENDER_WORKERS must be an integer 1-64, got '0'",
      "PARLEY_FORCE_TRACE must be true or false (also 1/0, yes/no, on/off), got 'maybe'",
      "PARLEY_LOG_LEVEL must be one of debug, info, warn, got 'loud'",
    ]);
  });

  it("requires variables without a default and lists them in the message", () => {
    const required = {
      secret: stringVar("PARLEY_TOKEN_SECRET", { secret: true }),
      port: portVar("PARLEY_PORT"),
    };
    let caught: unknown;
    try {
      loadConfig(required, {});
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const message = (caught as ConfigError).message;
    expect(message).toContain("PARLEY_TOKEN_SECRET is required: it must be a non-empty string");
    expect(message).toContain("PARLEY_PORT is required: it must be an integer port 0-65535");
  });

  it("never echoes a secret", () => {
    const found = problems(() =>
      loadConfig(
        { redis: urlVar("PARLEY_REDIS_URL", { secret: true }), n: intVar("N") },
        { PARLEY_REDIS_URL: "redis//:hunter2@cache", N: "x1" },
      ),
    );
    expect(found).toEqual([
      "PARLEY_REDIS_URL must be an absolute URL, got a value (not shown)",
      "N must be an integer, got 'x1'",
    ]);
    expect(found.join()).not.toContain("hunter2");
  });
});
