import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { BenchOptions, TargetName } from "../options.ts";
import type { BenchDevice } from "../population.ts";
import { createPopulation, createTransportPool } from "../population.ts";
import { watchUsage } from "../proc-stats.ts";
import type { Progress } from "../progress.ts";
import type { BenchReport, Goal } from "../report.ts";
import { fileStamp } from "../report.ts";
import { anonymousDevices, openStreams, runPrefix } from "../scenario-kit.ts";
import type { BenchStream } from "../stream-client.ts";
import { createConnectionPool } from "../stream-client.ts";
import type { Target } from "../targets.ts";
import { startTarget } from "../targets.ts";

interface IdleLevel {
  readonly level: number;
  readonly connected: number;
  readonly failed: number;
  /** Opens refused and tried again, by code. */
  readonly refusals: Record<string, number>;
  readonly connections: number;
  readonly connectMs: number;
  /** Of the process holding the streams, after a full GC. */
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  /** The V8 heap the process holds (used plus free space in its pages), after the full GC. */
  readonly heapTotalBytes: number;
  readonly externalBytes: number;
  /** Growth since before the first stream, per connected stream. */
  readonly rssPerStream: number;
  readonly heapPerStream: number;
  /** Kernel TCP buffer memory (/proc/net/sockstat) growth per connection, both ends. */
  readonly kernelPerConnection: number;
  /** CPU of the process at rest (heartbeats only) over the idle window, percent of one core. */
  readonly idleCpuPercent: number;
  /** Of which in the kernel (socket reads and writes), percent of one core. */
  readonly idleSystemCpuPercent: number;
  readonly loadgenCpuPercent: number;
  readonly loadgenRssBytes: number;
  readonly ends: Record<string, number>;
}

interface IdleResult {
  readonly target: TargetName;
  readonly heartbeatMs: number;
  readonly levels: readonly IdleLevel[];
  /** The first level that did not fully connect (or the target died at), and why. */
  readonly broke: { level: number; reason: string } | undefined;
}

function kernelTcpBytes(): number {
  const text = readFileSync("/proc/net/sockstat", "utf8");
  const pages = Number(text.match(/^TCP:.* mem (\d+)/m)?.[1] ?? 0);
  return pages * 4096;
}

/** S3: idle streams with heartbeats, level by level on one process: memory per stream, CPU at rest. */
export async function runIdle(options: BenchOptions, progress: Progress): Promise<BenchReport> {
  const results: IdleResult[] = [];
  for (const name of options.targets) {
    progress.note(
      `== s3 on ${name}: ${options.levels.join(", ")} idle streams, ${options.streamsPerConnection} per connection ==`,
    );
    const target = await startTarget(name, options);
    try {
      results.push(await idleOn(target, options, progress));
    } finally {
      await target.stop();
    }
  }
  return idleReport(options, results);
}

async function idleOn(target: Target, options: BenchOptions, progress: Progress): Promise<IdleResult> {
  const max = Math.max(...options.levels);
  const heartbeatMs = options.heartbeatMs ?? 20_000;
  let devices: BenchDevice[] = anonymousDevices(max);
  if (target.name === "parley") {
    const transports = createTransportPool(target.urls, options.connections, options.sourceAddresses);
    const started = performance.now();
    // Five devices per user (the most a user may have): a fifth of the users to create.
    const users = await createPopulation({
      dataDir: target.dataDir as string,
      transports,
      prefix: runPrefix("s3"),
      users: Math.ceil(max / 5),
      devicesPerUser: 5,
      profiles: false,
      concurrency: 128,
      onProgress: (done, total) => {
        if (done % 5000 === 0) progress.note(`  registered ${done}/${total} devices`);
      },
    });
    devices = users.flatMap((u) => u.devices).slice(0, max);
    progress.note(
      `  ${devices.length} devices registered in ${((performance.now() - started) / 1000).toFixed(0)} s`,
    );
  }
  const pool = createConnectionPool(target.urls[0] as string, {
    connections: Math.ceil(max / options.streamsPerConnection),
    sourceAddresses: options.sourceAddresses,
  });
  const snapshotDir = join(options.outDir, "profiles");
  if (options.heapSnapshot) mkdirSync(snapshotDir, { recursive: true });
  const snapshotStamp = fileStamp(new Date());
  // A snapshot is written only where there is a process of ours to write it (not a cluster's).
  const snapshotPath = (label: string) => {
    if (!options.heapSnapshot || target.child === undefined) return undefined;
    const path = join(snapshotDir, `s3-${target.name}-${snapshotStamp}-${label}.heapsnapshot`);
    progress.note(`  heap snapshot: ${path}`);
    return path;
  };
  const base = await target.memory(snapshotPath("base"));
  const kernelBase = kernelTcpBytes();
  const streams: BenchStream[] = [];
  const levels: IdleLevel[] = [];
  let broke: IdleResult["broke"];
  // Each round's end counts keep growing as its streams close: summed when read.
  const rounds: ReadonlyMap<string, number>[] = [];
  let failedTotal = 0;
  const ends = () => {
    const sum = new Map<string, number>();
    for (const round of rounds) for (const [code, n] of round) sum.set(code, (sum.get(code) ?? 0) + n);
    return sum;
  };
  try {
    for (const level of [...options.levels].sort((a, b) => a - b)) {
      const batch = devices.slice(streams.length, level);
      const started = performance.now();
      const stop = progress.track(
        () => `${target.name}: ${streams.length} streams open, opening up to ${level}`,
      );
      let opened: Awaited<ReturnType<typeof openStreams>>;
      try {
        opened = await openStreams(target, batch, options, undefined, {
          perConnection: options.streamsPerConnection,
          heartbeatMs,
          pool,
          concurrency: 500,
        });
      } finally {
        stop();
      }
      streams.push(...opened.streams);
      rounds.push(opened.ends);
      failedTotal += opened.failed;
      const connected = streams.length - failedTotal;
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const memory = await target.memory(snapshotPath(String(level))).catch(() => undefined);
      if (memory === undefined && target.child !== undefined) {
        broke = { level, reason: `the process died: ${target.child.output().slice(-500)}` };
        break;
      }
      const usage = watchUsage({ ...target.pids, loadgen: process.pid });
      const monotonicFrom = Number(process.hrtime.bigint() / 1000n);
      await new Promise((resolve) => setTimeout(resolve, options.durationMs));
      const monotonicTo = Number(process.hrtime.bigint() / 1000n);
      const report = usage.stop();
      const server = report.processes.find((p) => p.name !== "loadgen");
      const loadgen = report.processes.find((p) => p.name === "loadgen");
      const stillOpen = streams.length - [...ends().values()].reduce((a, b) => a + b, 0);
      const rss = memory?.rss ?? server?.rssAtEndBytes ?? Number.NaN;
      const entry: IdleLevel = {
        level,
        connected,
        failed: opened.failed,
        refusals: Object.fromEntries(opened.refusals),
        connections: pool.size,
        connectMs: performance.now() - started,
        rssBytes: rss,
        heapUsedBytes: memory?.heapUsed ?? Number.NaN,
        heapTotalBytes: memory?.heapTotal ?? Number.NaN,
        externalBytes: memory?.external ?? Number.NaN,
        rssPerStream: (rss - (base?.rss ?? Number.NaN)) / Math.max(1, connected),
        heapPerStream:
          ((memory?.heapUsed ?? Number.NaN) - (base?.heapUsed ?? Number.NaN)) / Math.max(1, connected),
        kernelPerConnection: (kernelTcpBytes() - kernelBase) / Math.max(1, pool.size),
        idleCpuPercent: server?.cpuPercent ?? Number.NaN,
        idleSystemCpuPercent: server?.systemCpuPercent ?? Number.NaN,
        loadgenCpuPercent: loadgen?.cpuPercent ?? Number.NaN,
        loadgenRssBytes: process.memoryUsage().rss,
        ends: Object.fromEntries(ends()),
      };
      levels.push(entry);
      progress.note(
        `${target.name} ${level}: ${connected} connected (${opened.failed} failed, ${stillOpen} still open) over ${pool.size} connections in ${(entry.connectMs / 1000).toFixed(1)} s; ` +
          `RSS ${(rss / 2 ** 20).toFixed(0)} MB (V8 heap ${(entry.heapTotalBytes / 2 ** 20).toFixed(0)} MB) = ${(entry.rssPerStream / 1024).toFixed(1)} KB/stream (heap ${(entry.heapPerStream / 1024).toFixed(1)} KB); ` +
          `idle CPU ${entry.idleCpuPercent.toFixed(1)}% (kernel ${entry.idleSystemCpuPercent.toFixed(1)}%), loadgen ${entry.loadgenCpuPercent.toFixed(1)}%; ` +
          `refused and retried ${JSON.stringify(entry.refusals)} (idle window ${monotonicFrom}-${monotonicTo})`,
      );
      if (opened.failed > 0 || stillOpen < connected) {
        broke = {
          level,
          reason: `${opened.failed} streams did not open, ${connected - stillOpen} closed: ${JSON.stringify(Object.fromEntries(ends()))}`,
        };
        break;
      }
    }
  } finally {
    for (const stream of streams) stream.close();
    pool.close();
  }
  return { target: target.name, heartbeatMs, levels, broke };
}

function idleReport(options: BenchOptions, results: readonly IdleResult[]): BenchReport {
  const parley = results.find((r) => r.target === "parley");
  const top = parley?.levels.at(-1);
  const goals: Goal[] =
    parley === undefined || top === undefined
      ? []
      : [
          {
            goal: "S3 idle streams on one edge process",
            target: "100K streams at <= 30 KB per stream",
            reached: `${top.connected} streams at ${(top.rssPerStream / 1024).toFixed(1)} KB RSS per stream${parley.broke === undefined ? "" : `; broke at ${parley.broke.level}`}`,
            met: top.connected >= 100_000 ? top.rssPerStream <= 30 * 1024 : undefined,
          },
        ];
  const rssAt = (name: TargetName) => results.find((r) => r.target === name)?.levels.at(-1)?.rssPerStream;
  const ratio = (a?: number, b?: number) =>
    a === undefined || b === undefined || b === 0 ? undefined : a / b;
  const categories = [...new Set(results.flatMap((r) => r.levels.map((l) => String(l.level))))];
  return {
    scenario: "s3",
    title: `S3 idle streams (${options.streamsPerConnection} streams per HTTP/2 connection)`,
    tables: [
      {
        title: "Idle streams per level",
        headers: [
          "target",
          "level",
          "connected",
          "failed",
          "retried opens",
          "connections",
          "connect s",
          "RSS MB",
          "RSS per stream KB",
          "heap per stream KB",
          "kernel TCP per conn KB",
          "idle CPU %",
          "of which kernel %",
          "loadgen CPU %",
          "loadgen RSS MB",
        ],
        rows: results.flatMap((r) =>
          r.levels.map((l) => [
            r.target,
            l.level,
            l.connected,
            l.failed,
            Object.values(l.refusals).reduce((a, b) => a + b, 0),
            l.connections,
            l.connectMs / 1000,
            l.rssBytes / 2 ** 20,
            l.rssPerStream / 1024,
            l.heapPerStream / 1024,
            l.kernelPerConnection / 1024,
            l.idleCpuPercent,
            l.idleSystemCpuPercent,
            l.loadgenCpuPercent,
            l.loadgenRssBytes / 2 ** 20,
          ]),
        ),
      },
    ],
    charts: [
      {
        title: "RSS per idle stream (KB)",
        xLabel: "streams",
        yLabel: "KB per stream",
        bars: { categories },
        threshold: { y: 30, label: "target 30 KB" },
        series: results.map((r) => ({
          name: r.target,
          points: r.levels.map((l) => [categories.indexOf(String(l.level)), l.rssPerStream / 1024] as const),
        })),
      },
      {
        title: "CPU at rest (% of one core)",
        xLabel: "streams",
        yLabel: "CPU %",
        bars: { categories },
        series: results.map((r) => ({
          name: r.target,
          points: r.levels.map((l) => [categories.indexOf(String(l.level)), l.idleCpuPercent] as const),
        })),
      },
    ],
    goals,
    ratios: {
      "parley / raw (RSS per stream at the top level)": ratio(rssAt("parley"), rssAt("raw")),
      "parley / relay (RSS per stream at the top level)": ratio(rssAt("parley"), rssAt("relay")),
    },
    notes: [
      `Streams are opened ${options.streamsPerConnection} per HTTP/2 connection over ${options.sourceAddresses} loopback source addresses (one connection per device would need a file descriptor per device on each side: this machine's hard limit is ${fdHardLimit()} per process).`,
      `Every client sends a heartbeat each ${results[0]?.heartbeatMs ?? 20_000} ms (Parley: the interval its ServerReady names; baselines: the same, ignored by the server). Memory is RSS after a full GC of the process holding the streams (Parley: the whole embedded mesh), growth since before the first stream; kernel socket buffers are not in RSS and are shown apart.`,
      ...results
        .filter((r) => r.broke !== undefined)
        .map((r) => `${r.target} broke at ${r.broke?.level}: ${r.broke?.reason}`),
    ],
    data: { results },
  };
}

function fdHardLimit(): string {
  try {
    const limits = readFileSync("/proc/self/limits", "utf8");
    return limits.match(/^Max open files\s+\d+\s+(\d+)/m)?.[1] ?? "unknown";
  } catch {
    return "unknown";
  }
}
