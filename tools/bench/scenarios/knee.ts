import { createDeliveryLog } from "../delivery-log.ts";
import type { BenchOptions, TargetName } from "../options.ts";
import { createPopulation, createTransportPool } from "../population.ts";
import type { Progress } from "../progress.ts";
import type { RateStepsResult, StepResult } from "../rate-steps.ts";
import { keptUp, P99_LIMIT_MS, runRateSteps } from "../rate-steps.ts";
import type { BenchReport, Chart, Goal, Table } from "../report.ts";
import type { StepRunner } from "../runners.ts";
import { createBaselineRunner, createPushRunner, createSdkRunner } from "../runners.ts";
import { anonymousDevices, createSdkPairs, openStreams, runPrefix } from "../scenario-kit.ts";
import type { Target } from "../targets.ts";
import { startTarget } from "../targets.ts";

export interface TargetKnee extends RateStepsResult {
  readonly target: TargetName;
  readonly devices: number;
  readonly connectMs: number;
  /** Memory of the process under test per connected stream (RSS and heap after GC), bytes. */
  readonly memoryPerStream: { rss: number; heapUsed: number } | undefined;
  readonly streamEnds: Record<string, number>;
}

/** Memory growth of the target per stream, between two after-GC readings. */
export async function memoryPerStream(
  target: Target,
  before: Record<string, number> | undefined,
  streams: number,
): Promise<{ rss: number; heapUsed: number } | undefined> {
  const after = await target.memory();
  if (before === undefined || after === undefined || streams === 0) return undefined;
  return {
    rss: ((after.rss ?? 0) - (before.rss ?? 0)) / streams,
    heapUsed: ((after.heapUsed ?? 0) - (before.heapUsed ?? 0)) / streams,
  };
}

/**
 * S1 (`s1`: the whole durable pipeline through the SDK) and the edge push path (`push`: PushBatch
 * straight to the edge, minimal clients), each after the raw and relay baselines with the same
 * devices and rate steps.
 */
export async function runKnee(options: BenchOptions, progress: Progress): Promise<BenchReport> {
  const results: TargetKnee[] = [];
  for (const name of options.targets) {
    progress.note(`== ${options.scenario} on ${name}: ${options.devices} devices ==`);
    const target = await startTarget(name, options);
    try {
      results.push(await kneeOn(target, options, progress));
    } finally {
      await target.stop();
    }
  }
  return kneeReport(options, results);
}

async function kneeOn(target: Target, options: BenchOptions, progress: Progress): Promise<TargetKnee> {
  const log = createDeliveryLog();
  let before: Record<string, number> | undefined;
  const common = {
    label: target.name,
    log,
    progress,
    rates: options.rates,
    stepMs: options.stepMs,
    settleMs: options.settleMs,
    pids: target.pids,
    firstSeq: 0,
    rpcCalls: () => target.rpcCalls(),
  };
  let runner: StepRunner;
  let close: () => Promise<void>;
  let connectMs: number;
  let streams: number;
  let ends: Map<string, number> = new Map();
  if (target.name === "parley" && options.scenario === "s1") {
    const pairs = await createSdkPairs(target, options, log, progress, options.devices);
    before = await target.memory();
    connectMs = await pairs.connectAll();
    streams = pairs.clients.size;
    runner = createSdkRunner(pairs.senders, options.payloadBytes);
    close = () => pairs.closeAll();
  } else {
    let devices = anonymousDevices(options.devices);
    if (target.name === "parley") {
      const transports = createTransportPool(target.urls, options.connections, options.sourceAddresses);
      const users = await createPopulation({
        dataDir: target.dataDir as string,
        transports,
        prefix: runPrefix(options.scenario),
        users: options.devices,
        devicesPerUser: 1,
        profiles: false,
        onProgress: (done, total) => progress.note(`  registered ${done}/${total} devices`),
      });
      devices = users.flatMap((u) => u.devices);
    }
    before = await target.memory();
    const opened = await openStreams(target, devices, options, log);
    if (opened.failed > 0)
      throw new Error(`${opened.failed} streams did not open: ${JSON.stringify([...opened.ends])}`);
    connectMs = opened.connectMs;
    streams = opened.streams.length;
    ends = opened.ends;
    if (target.name === "parley") {
      if (target.pushAddress === undefined || opened.hostId === undefined) {
        throw new Error("the push scenario needs the edge's push address (--push-address) and host id");
      }
      runner = createPushRunner({
        pushAddress: target.pushAddress,
        hostId: opened.hostId,
        devices,
        payloadBytes: options.payloadBytes,
      });
    } else {
      runner = createBaselineRunner(target.child as NonNullable<Target["child"]>);
    }
    close = async () => opened.close();
  }
  progress.note(`  ${streams} streams connected in ${(connectMs / 1000).toFixed(1)} s`);
  const memory = await memoryPerStream(target, before, streams);
  try {
    const result = await runRateSteps({ ...common, runner });
    return {
      ...result,
      target: target.name,
      devices: streams,
      connectMs,
      memoryPerStream: memory,
      streamEnds: Object.fromEntries(ends),
    };
  } finally {
    await runner.close();
    await close();
  }
}

const cpuOf = (step: StepResult, name: string) => step.usage.find((u) => u.name === name)?.cpuPercent;

export function stepRows(results: readonly { target: TargetName; steps: readonly StepResult[] }[]): Table {
  return {
    title: "Rate steps",
    headers: [
      "target",
      "rate/s",
      "offered/s",
      "delivered/s",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "p99.9 ms",
      "max ms",
      "lost",
      "dup",
      "errors",
      "server CPU %",
      "server CPU ms per 1K msgs",
      "loadgen CPU %",
      "server peak RSS MB",
      "others CPU %",
      "ok",
    ],
    rows: results.flatMap((r) =>
      r.steps.map((s) => {
        const server = s.usage.find((u) => u.name !== "loadgen");
        return [
          r.target,
          s.rate,
          s.offeredPerSec,
          s.deliveredPerSec,
          s.latency.p50,
          s.latency.p90,
          s.latency.p99,
          s.latency.p999,
          s.latency.max,
          s.lost,
          s.duplicates,
          Object.entries(s.errors)
            .map(([k, v]) => `${k}: ${v}`)
            .join("; ") || "0",
          server?.cpuPercent ?? Number.NaN,
          s.delivered > 0 ? ((server?.cpuMs ?? Number.NaN) * 1000) / s.delivered : Number.NaN,
          cpuOf(s, "loadgen") ?? Number.NaN,
          (server?.peakRssBytes ?? Number.NaN) / 2 ** 20,
          s.machine.othersPercent,
          s.passed ? "yes" : "no",
        ];
      }),
    ),
  };
}

export function kneeCharts(
  results: readonly { target: TargetName; steps: readonly StepResult[] }[],
  what: string,
): Chart[] {
  return [
    {
      title: `${what}: delivered vs offered`,
      xLabel: "offered msg/s",
      yLabel: "delivered msg/s",
      series: results.map((r) => ({
        name: r.target,
        points: r.steps.map((s) => [s.offeredPerSec, s.deliveredPerSec] as const),
      })),
    },
    {
      title: `${what}: CPU of the process under test per 1,000 messages`,
      xLabel: "offered msg/s",
      yLabel: "CPU ms per 1K msgs (log)",
      logY: true,
      series: results.map((r) => ({
        name: r.target,
        points: r.steps.map((s) => {
          const server = s.usage.find((u) => u.name !== "loadgen");
          return [
            s.offeredPerSec,
            s.delivered > 0 ? ((server?.cpuMs ?? Number.NaN) * 1000) / s.delivered : Number.NaN,
          ] as const;
        }),
      })),
    },
    {
      title: `${what}: send -> display p99`,
      xLabel: "offered msg/s",
      yLabel: "p99 ms (log)",
      logY: true,
      threshold: { y: P99_LIMIT_MS, label: "200 ms" },
      series: results.map((r) => ({
        name: r.target,
        points: r.steps.map((s) => [s.offeredPerSec, s.latency.p99] as const),
      })),
    },
  ];
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : a / b;
}

/**
 * CPU of the server process per 1,000 messages/s at the highest rate every target kept up with: the
 * ratio that survives a noisy machine best, since it does not depend on where the knee fell.
 */
function cpuPer1k(result: TargetKnee | undefined, rate: number | undefined): number | undefined {
  if (result === undefined || rate === undefined) return undefined;
  const step = result.steps.find((s) => s.rate === rate);
  const server = step?.usage.find((u) => u.name !== "loadgen");
  if (step === undefined || server === undefined || step.offeredPerSec === 0) return undefined;
  return server.cpuPercent / (step.offeredPerSec / 1000);
}

function kneeReport(options: BenchOptions, results: readonly TargetKnee[]): BenchReport {
  const by = (name: TargetName) => results.find((r) => r.target === name);
  const raw = by("raw");
  const relay = by("relay");
  const parley = by("parley");
  const push = options.scenario === "push";
  // The highest rate every target kept up with (nothing lost, >= 95% delivered): where CPU per
  // message compares. A saturated step's CPU is spread over a backlog, not over the offered rate.
  const kept = (r: TargetKnee) => new Set(r.steps.filter(keptUp).map((s) => s.rate));
  const present = results.map(kept);
  const shared = [...(present[0] ?? [])].filter((rate) => present.every((set) => set.has(rate))).at(-1);
  const ratios = {
    "parley / raw (knee)": ratio(parley?.knee, raw?.knee),
    "parley / relay (knee)": ratio(parley?.knee, relay?.knee),
    "relay / raw (knee)": ratio(relay?.knee, raw?.knee),
    "parley / raw (max sustained)": ratio(parley?.maxSustained, raw?.maxSustained),
    "parley / relay (max sustained)": ratio(parley?.maxSustained, relay?.maxSustained),
    [`raw / parley (server CPU per 1K msg/s at ${shared ?? "-"}/s)`]: ratio(
      cpuPer1k(raw, shared),
      cpuPer1k(parley, shared),
    ),
    [`relay / parley (server CPU per 1K msg/s at ${shared ?? "-"}/s)`]: ratio(
      cpuPer1k(relay, shared),
      cpuPer1k(parley, shared),
    ),
  };
  const goals: Goal[] = [];
  if (parley !== undefined) {
    if (push) {
      const r = ratios["parley / raw (knee)"];
      goals.push({
        goal: "edge push path vs raw (knee)",
        target: ">= 50% of raw",
        reached:
          r === undefined
            ? "-"
            : `${(100 * r).toFixed(0)}% (${parley.knee ?? 0} vs ${raw?.knee ?? "-"} msg/s)`,
        met: r === undefined ? undefined : r >= 0.5,
      });
    } else {
      goals.push({
        goal: `S1 knee, whole pipeline (${options.profile})`,
        target: ">= 5,000 msg/s at p99 < 200 ms, nothing lost",
        reached: `${parley.knee ?? 0} msg/s`,
        met: (parley.knee ?? 0) >= 5000,
      });
    }
  }
  const summary: Table = {
    title: "Knee per target",
    headers: [
      "target",
      "devices",
      "connect s",
      "knee msg/s",
      "delivered at knee msg/s",
      "max sustained msg/s",
      "RSS per stream KB",
      "heap per stream KB",
    ],
    rows: results.map((r) => [
      r.target,
      r.devices,
      r.connectMs / 1000,
      r.knee ?? 0,
      r.kneeDelivered ?? 0,
      r.maxSustained ?? 0,
      (r.memoryPerStream?.rss ?? Number.NaN) / 1024,
      (r.memoryPerStream?.heapUsed ?? Number.NaN) / 1024,
    ]),
  };
  const notes = [
    `Rates are offered open loop in 10 ms ticks for ${options.stepMs / 1000} s per step; a step passes with p99 < ${P99_LIMIT_MS} ms, nothing lost (after up to ${options.settleMs / 1000} s) and no errors; the knee is the highest passing step. Steps go on past a failed p99 while the target keeps up, and stop once it loses something, delivers under 95% of the offered rate, or its p99 passes 2 s. Max sustained: the most delivered per second in a step that lost nothing and kept up, whatever its p99 (less sensitive to a noisy neighbour than the knee).`,
    push
      ? "push: the load generator plays delivery and calls EdgePushService.PushBatch on the edge of a running embedded mesh once per tick (one message item per device, up to 1,000 per batch); devices are minimal HTTP/2 gRPC clients (no SDK). raw and relay generate the same messages in their own process."
      : `s1: ${options.direction === "both" ? "both users of each pair write" : "one user of each pair writes"}; every message goes through the SDK (Session send frame) -> edge -> sender -> broker -> history -> broker -> delivery -> edge -> SDK onMessage (auto-ack on). The baselines push the same rates to the same number of minimal clients.`,
    "CPU is percent of one core over each step (and its settle time); 'others' is the rest of the machine (other engineers' processes, the engines) in percent of all cores.",
  ];
  return {
    scenario: options.scenario,
    title: push ? "Edge push path vs raw and relay" : "S1 throughput knee (1:1)",
    tables: [summary, stepRows(results)],
    charts: kneeCharts(results, push ? "push path" : "S1"),
    goals,
    ratios,
    notes,
    data: { results },
  };
}
