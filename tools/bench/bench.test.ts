// A smoke run of the benchmark tool: one tiny S1 (baselines, then the whole pipeline through the
// SDK on an embedded mesh in a child process), checked for the shape of what it writes and for
// nothing lost or shown twice. Correctness only: no assertion here depends on timing.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, describe, expect, it } from "vitest";
import { SessionResponseSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { benchFrame, messageTemplate } from "./bench-message.ts";
import { runBench } from "./cli.ts";
import { createLatencyHistogram } from "./latency.ts";
import { parseBenchOptions } from "./options.ts";
import { locateCiphertext, readStamp } from "./stamp.ts";

describe("bench building blocks", () => {
  it("finds the stamp inside an encoded SessionResponse without decoding it", () => {
    const bytes = toBinary(
      SessionResponseSchema,
      create(SessionResponseSchema, benchFrame(41, 7, 100, crypto.randomUUID())),
    );
    const where = locateCiphertext(bytes, 0, bytes.length);
    expect(where.body).toBe(2);
    expect(where.length).toBe(100);
    expect(readStamp(bytes, where.offset, where.length)).toMatchObject({ seq: 41, target: 7 });
  });

  it("patches the raw baseline's template where the stamp is", () => {
    const { bytes, stampOffset } = messageTemplate(100);
    const body = bytes.subarray(5);
    expect(bytes.readUInt32BE(1)).toBe(body.length);
    expect(locateCiphertext(body, 0, body.length).offset).toBe(stampOffset - 5);
  });

  it("reports percentiles within the histogram's precision", () => {
    const histogram = createLatencyHistogram();
    for (let i = 1; i <= 1000; i++) histogram.record(i);
    expect(histogram.count).toBe(1000);
    expect(histogram.percentile(50)).toBeGreaterThanOrEqual(500);
    expect(histogram.percentile(50)).toBeLessThan(500 * 1.02);
    expect(histogram.percentile(99)).toBeGreaterThanOrEqual(990);
    expect(histogram.max).toBe(1000);
  });
});

describe("npm run bench -- s1 --quick", () => {
  const out = mkdtempSync(join(tmpdir(), "parley-bench-test-"));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("runs the baselines then Parley and writes JSON, Markdown and SVG with nothing lost", async () => {
    const options = parseBenchOptions([
      "s1",
      "--quick",
      "--devices",
      "6",
      "--rates",
      "15",
      "--step-duration",
      "1",
      "--settle",
      "60",
      "--connections",
      "2",
      "--out",
      out,
      "--tag",
      "smoke",
    ]);
    const { base } = await runBench(options);
    for (const ext of ["json", "md", "svg"]) expect(existsSync(`${base}.${ext}`)).toBe(true);

    const json = JSON.parse(readFileSync(`${base}.json`, "utf8"));
    expect(json).toMatchObject({ scenario: "s1", profile: "embedded" });
    expect(json.machine.cpus).toBeGreaterThan(0);
    expect(Object.keys(json.ratios)).toContain("parley / raw (knee)");
    const results = json.data.results as {
      target: string;
      devices: number;
      steps: {
        sent: number;
        delivered: number;
        lost: number;
        duplicates: number;
        errors: object;
        usage: { name: string }[];
      }[];
    }[];
    expect(results.map((r) => r.target)).toEqual(["raw", "relay", "parley"]);
    for (const result of results) {
      expect(result.devices).toBe(6);
      expect(result.steps).toHaveLength(1);
      const [step] = result.steps;
      expect(step?.sent).toBeGreaterThan(0);
      expect(step?.lost).toBe(0);
      expect(step?.duplicates).toBe(0);
      expect(step?.errors).toEqual({});
      expect(step?.delivered).toBe(step?.sent);
      // The process under test and the load generator are measured apart.
      expect(step?.usage.map((u) => u.name).sort()).toEqual(
        [result.target === "parley" ? "mesh" : result.target, "loadgen"].sort(),
      );
    }
    expect(readFileSync(`${base}.md`, "utf8")).toContain("| parley |");
    expect(readFileSync(`${base}.svg`, "utf8")).toMatch(/^<svg [^>]*>[\s\S]*<\/svg>$/);
  }, 120_000);
});

describe("npm run bench -- s2 --quick --clients minimal", () => {
  const out = mkdtempSync(join(tmpdir(), "parley-bench-test-"));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("fans each send out to every minimal client of the group's members", async () => {
    const options = parseBenchOptions(
      ["s2", "--quick", "--targets", "parley", "--clients", "minimal", "--connections", "2"].concat([
        "--out",
        out,
        "--tag",
        "smoke",
      ]),
    );
    const { base } = await runBench(options);
    const json = JSON.parse(readFileSync(`${base}.json`, "utf8"));
    const [result] = json.data.results as {
      target: string;
      devices: number;
      sends: number;
      incomplete: number;
      missing: number;
      duplicates: number;
      rpcCallsPerSend: Record<string, number>;
    }[];
    // 8 members x 2 devices, the sending device left out.
    expect(result).toMatchObject({
      target: "parley",
      devices: 15,
      sends: 3,
      incomplete: 0,
      missing: 0,
      duplicates: 0,
    });
    // The census of the mesh's internal calls: one SendMessage per send, and the minimal clients'
    // acks reached history.
    expect(result?.rpcCallsPerSend["sender.v1.SenderService/SendMessage"]).toBe(1);
    expect(result?.rpcCallsPerSend["history.v1.HistoryService/RecordAcknowledgements"]).toBeGreaterThan(0);
  }, 120_000);
});
