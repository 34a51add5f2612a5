import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createDeliveryLog } from "../delivery-log.ts";
import type { BenchOptions, TargetName } from "../options.ts";
import type { Progress } from "../progress.ts";
import type { StepResult } from "../rate-steps.ts";
import { runRateSteps } from "../rate-steps.ts";
import type { BenchReport, Goal } from "../report.ts";
import type { StepRunner } from "../runners.ts";
import { createBaselineRunner, createSdkRunner } from "../runners.ts";
import { anonymousDevices, createSdkPairs, openStreams } from "../scenario-kit.ts";
import type { Target } from "../targets.ts";
import { startTarget } from "../targets.ts";
import { stepRows } from "./knee.ts";

/** p99 a surge must stay under (issue 8: P99 < 10 s under surge). */
const SURGE_P99_MS = 10_000;
/** The sender service allows each device 20 messages/s (burst 50): devices needed per msg/s. */
const SENDS_PER_DEVICE_PER_SECOND = 15;

/** The S1 knee of Parley in the newest s1 result under `outDir` that found one, if any. */
function lastKnee(outDir: string, profile: string): number | undefined {
  let files: string[];
  try {
    files = readdirSync(outDir)
      .filter((f) => f.startsWith(`s1-${profile}-`) && f.endsWith(".json") && !f.includes("-quick"))
      .sort()
      .reverse();
  } catch {
    return undefined;
  }
  for (const file of files) {
    try {
      const json = JSON.parse(readFileSync(join(outDir, file), "utf8")) as {
        data?: { results?: { target: string; knee?: number }[] };
      };
      const knee = json.data?.results?.find((r) => r.target === "parley")?.knee;
      if (knee !== undefined) return knee;
    } catch {
      // An unreadable result is skipped.
    }
  }
  return undefined;
}

interface SurgeResult {
  readonly target: TargetName;
  readonly step: StepResult | undefined;
  readonly devices: number;
}

/** S4: 10x the S1 knee for --duration: nothing lost, p99 < 10 s, how long the backlog drains. */
export async function runSurge(options: BenchOptions, progress: Progress): Promise<BenchReport> {
  const knee = lastKnee(options.outDir, options.profile);
  const rate = options.rate ?? (options.quick ? 100 : 10 * (knee ?? 500));
  const devices = Math.max(options.devices, 2 * Math.ceil(rate / SENDS_PER_DEVICE_PER_SECOND / 2));
  progress.note(
    `s4: surge of ${rate} msg/s for ${options.durationMs / 1000} s over ${devices} devices` +
      (options.rate === undefined ? ` (10x the last S1 knee: ${knee ?? "none found, 500 assumed"})` : ""),
  );
  const results: SurgeResult[] = [];
  for (const name of options.targets) {
    progress.note(`== s4 on ${name} ==`);
    const target = await startTarget(name, options);
    try {
      results.push(await surgeOn(target, options, progress, rate, devices));
    } finally {
      await target.stop();
    }
  }
  const parley = results.find((r) => r.target === "parley")?.step;
  const goals: Goal[] =
    parley === undefined
      ? []
      : [
          {
            goal: `S4 surge at ${rate} msg/s for ${options.durationMs / 1000} s`,
            target: "nothing lost, p99 < 10 s",
            reached: `lost ${parley.lost}, errors ${Object.values(parley.errors).reduce((a, b) => a + b, 0)}, p99 ${(parley.latency.p99 / 1000).toFixed(2)} s, drained ${(parley.drainMs / 1000).toFixed(1)} s after the surge`,
            met: parley.lost === 0 && parley.latency.p99 < SURGE_P99_MS,
          },
        ];
  const drain = (name: TargetName) => results.find((r) => r.target === name)?.step?.drainMs;
  return {
    scenario: "s4",
    title: `S4 surge (${rate} msg/s for ${options.durationMs / 1000} s)`,
    tables: [
      {
        title: "Surge",
        headers: ["target", "devices", "drain s"],
        rows: results.map((r) => [r.target, r.devices, (r.step?.drainMs ?? Number.NaN) / 1000]),
      },
      stepRows(results.map((r) => ({ target: r.target, steps: r.step === undefined ? [] : [r.step] }))),
    ],
    charts: [
      {
        title: "surge: p50 / p99 / max send -> display, and drain",
        xLabel: "",
        yLabel: "ms (log)",
        logY: true,
        bars: { categories: ["p50", "p99", "max", "drain"] },
        threshold: { y: SURGE_P99_MS, label: "10 s" },
        series: results.map((r) => ({
          name: r.target,
          points: [
            [0, r.step?.latency.p50 ?? Number.NaN],
            [1, r.step?.latency.p99 ?? Number.NaN],
            [2, r.step?.latency.max ?? Number.NaN],
            [3, r.step?.drainMs ?? Number.NaN],
          ] as const,
        })),
      },
    ],
    goals,
    ratios: {
      "parley drain / raw drain":
        drain("raw") === undefined || drain("raw") === 0
          ? undefined
          : (drain("parley") ?? Number.NaN) / (drain("raw") as number),
    },
    notes: [
      `The surge is offered open loop; afterwards the run waits up to ${options.settleMs / 1000} s for every accepted message. Drain: from the end of the surge until the last message was shown.`,
      "Parley: the S1 population (1:1 pairs through the SDK); the sender's per-device limit (20/s, burst 50) sets the number of devices; refused sends are retried by the SDK and count as errors only when they finally fail.",
    ],
    data: { rate, devices, knee, results },
  };
}

async function surgeOn(
  target: Target,
  options: BenchOptions,
  progress: Progress,
  rate: number,
  devices: number,
): Promise<SurgeResult> {
  const log = createDeliveryLog();
  let runner: StepRunner;
  let close: () => Promise<void>;
  if (target.name === "parley") {
    const pairs = await createSdkPairs(target, options, log, progress, devices);
    await pairs.connectAll();
    runner = createSdkRunner(pairs.senders, options.payloadBytes);
    close = () => pairs.closeAll();
  } else {
    const opened = await openStreams(target, anonymousDevices(devices), options, log);
    runner = createBaselineRunner(target.child as NonNullable<Target["child"]>);
    close = async () => opened.close();
  }
  try {
    const result = await runRateSteps({
      label: target.name,
      runner,
      log,
      progress,
      rates: [rate],
      stepMs: options.durationMs,
      settleMs: options.settleMs,
      pids: target.pids,
      firstSeq: 0,
      rpcCalls: () => target.rpcCalls(),
      p99LimitMs: SURGE_P99_MS,
      keepGoing: true,
    });
    return { target: target.name, step: result.steps[0], devices };
  } finally {
    await runner.close();
    await close();
  }
}
