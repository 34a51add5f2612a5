import type { ParleyClient } from "../../../clients/ts/index.ts";
import { ContentKind } from "../../../gen/parley/common/v1/envelope_pb.ts";
import type { DeliveryWindow } from "../delivery-log.ts";
import { createDeliveryLog, waitUntil } from "../delivery-log.ts";
import type { LatencySummary } from "../latency.ts";
import { createLatencyHistogram } from "../latency.ts";
import type { BenchOptions, TargetName } from "../options.ts";
import type { BenchUser } from "../population.ts";
import {
  createBenchGroup,
  createPopulation,
  createTransportPool,
  inBatches,
  sdkClient,
} from "../population.ts";
import type { ProcessUsage } from "../proc-stats.ts";
import { watchUsage } from "../proc-stats.ts";
import type { Progress } from "../progress.ts";
import type { BenchReport, Goal } from "../report.ts";
import { callsPer, describeCalls } from "../rpc-census.ts";
import { errorKey } from "../runners.ts";
import { anonymousDevices, openStreams, runPrefix } from "../scenario-kit.ts";
import { readStamp, stampPayload } from "../stamp.ts";
import type { Target } from "../targets.ts";
import { startTarget } from "../targets.ts";
import { memoryPerStream } from "./knee.ts";

interface FanoutResult {
  readonly target: TargetName;
  readonly devices: number;
  readonly sends: number;
  readonly connectMs: number;
  /** Per send: from send until the last device had it. */
  readonly complete: LatencySummary;
  /** Every (send, device) delivery. */
  readonly perDevice: LatencySummary;
  /** Sends some device never got (within the settle time). */
  readonly incomplete: number;
  readonly missing: number;
  readonly duplicates: number;
  readonly errors: Record<string, number>;
  readonly usage: readonly ProcessUsage[];
  readonly memoryPerStream: { rss: number; heapUsed: number } | undefined;
  /** The mesh's internal gRPC calls per send, by method (embedded Parley only). */
  readonly rpcCallsPerSend?: Readonly<Record<string, number>>;
}

/** S2: one sender, a group of `members` x `devicesPerMember` online devices, repeated sends. */
export async function runFanout(options: BenchOptions, progress: Progress): Promise<BenchReport> {
  const results: FanoutResult[] = [];
  const devices = options.members * options.devicesPerMember;
  for (const name of options.targets) {
    progress.note(`== s2 on ${name}: ${options.members} members x ${options.devicesPerMember} devices ==`);
    const target = await startTarget(name, options);
    try {
      results.push(
        name === "parley"
          ? await fanoutOnParley(target, options, progress)
          : await fanoutOnBaseline(target, options, progress, devices),
      );
    } finally {
      await target.stop();
    }
  }
  return fanoutReport(options, results);
}

function summarize(
  target: Target,
  window: DeliveryWindow,
  devices: number,
  connectMs: number,
  errors: Record<string, number>,
  usage: readonly ProcessUsage[],
  memory: FanoutResult["memoryPerStream"],
): FanoutResult {
  const complete = createLatencyHistogram();
  let incomplete = 0;
  for (let seq = window.firstSeq; seq < (window.endSeq ?? window.firstSeq); seq++) {
    const entry = window.completion.get(seq);
    if (entry === undefined || entry.count < window.expectPerSeq) incomplete++;
    else complete.record(entry.lastAt - entry.sentAt);
  }
  return {
    target: target.name,
    devices,
    sends: (window.endSeq ?? window.firstSeq) - window.firstSeq,
    connectMs,
    complete: complete.summary(),
    perDevice: window.latency.summary(),
    incomplete,
    missing: Math.max(0, window.missing()),
    duplicates: window.duplicates,
    errors,
    usage,
    memoryPerStream: memory,
  };
}

async function fanoutOnBaseline(
  target: Target,
  options: BenchOptions,
  progress: Progress,
  devices: number,
): Promise<FanoutResult> {
  const log = createDeliveryLog({ trackCompletion: true });
  const before = await target.memory();
  const opened = await openStreams(target, anonymousDevices(devices), options, log);
  const memory = await memoryPerStream(target, before, opened.streams.length);
  const window = log.open(`${target.name} fan-out`, 0);
  window.expectPerSeq = opened.streams.length;
  const usage = watchUsage({ ...target.pids, loadgen: process.pid });
  const sent = await (target.child as NonNullable<Target["child"]>).request<{ endSeq: number }>({
    type: "broadcast",
    sends: options.sends,
    intervalMs: options.intervalMs,
    firstSeq: 0,
  });
  window.endSeq = sent.endSeq;
  await waitUntil(() => window.missing() <= 0, options.settleMs);
  const report = usage.stop();
  opened.close();
  const result = summarize(
    target,
    window,
    opened.streams.length,
    opened.connectMs,
    {},
    report.processes,
    memory,
  );
  progress.note(describe(result));
  return result;
}

async function fanoutOnParley(
  target: Target,
  options: BenchOptions,
  progress: Progress,
): Promise<FanoutResult> {
  const log = createDeliveryLog({ trackCompletion: true });
  const transports = createTransportPool(target.urls, options.connections, options.sourceAddresses);
  const prefix = runPrefix("s2");
  const users = await createPopulation({
    dataDir: target.dataDir as string,
    transports,
    prefix,
    // The owner is one of the group's members: a 1,000-member group is the owner and 999 others.
    users: options.members,
    devicesPerUser: options.devicesPerMember,
    profiles: true,
    onProgress: (done, total) => progress.note(`  registered ${done}/${total} devices`),
  });
  const [owner, ...members] = users as [BenchUser, ...BenchUser[]];
  const conversationId = await createBenchGroup(transports, owner, members);
  progress.note(`  group ${conversationId} with ${members.length} members`);
  // The owner sends from its first device; its other devices are recipients too.
  const sender = owner.devices[0];
  if (sender === undefined) throw new Error("the owner has no device");
  const recipients = users.flatMap((u) => u.devices).filter((d) => d !== sender);
  const clients: ParleyClient[] = [];
  const minimal = options.clients === "minimal";
  for (const device of minimal ? [] : recipients) {
    const client = sdkClient(transports, device);
    client.onMessage(({ message }) => {
      const stamp = readStamp(message.ciphertext);
      // One shared ciphertext for every device: the receiving device is this client's.
      if (stamp !== undefined) log.record({ ...stamp, target: device.index });
    });
    clients.push(client);
  }
  const senderClient = sdkClient(transports, sender);
  const before = await target.memory();
  const started = performance.now();
  await inBatches([senderClient, ...clients], 50, (c) => c.connect());
  // Minimal clients read each message's stamp without decoding it and ack it as the SDK would:
  // the load generator then costs little, and the figure is the mesh's.
  const opened = minimal
    ? await openStreams(target, recipients, options, log, { ack: true, stampTargetIsReceiver: true })
    : undefined;
  if (opened !== undefined && opened.failed > 0) throw new Error(`${opened.failed} streams failed to open`);
  const connectMs = performance.now() - started;
  progress.note(
    `  ${recipients.length + 1} ${minimal ? "streams (minimal clients, the sender an SDK client)" : "SDK clients"} connected in ${(connectMs / 1000).toFixed(1)} s`,
  );
  const memory = await memoryPerStream(target, before, recipients.length + 1);
  const window = log.open("parley fan-out", 0);
  window.expectPerSeq = recipients.length;
  const errors: Record<string, number> = {};
  const usage = watchUsage({ ...target.pids, loadgen: process.pid });
  const stop = progress.track(
    () => `parley fan-out: ${window.delivered}/${options.sends * recipients.length} deliveries`,
  );
  const callsBefore = await target.rpcCalls();
  const sends: Promise<unknown>[] = [];
  // For --cpu-prof: the sends' window on the clock the profiles use, without the set-up before it.
  const monotonicFrom = Number(process.hrtime.bigint() / 1000n);
  for (let seq = 0; seq < options.sends; seq++) {
    sends.push(
      senderClient
        .send({
          conversationId,
          envelope: {
            kind: ContentKind.TEXT,
            payload: { case: "shared", value: { ciphertext: stampPayload(seq, 0, options.payloadBytes) } },
          },
        })
        .catch((err: unknown) => {
          const key = errorKey(err);
          errors[key] = (errors[key] ?? 0) + 1;
          window.refused += recipients.length;
        }),
    );
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs));
  }
  await Promise.all(sends);
  window.endSeq = options.sends;
  await waitUntil(() => window.missing() <= 0, options.settleMs);
  stop();
  progress.note(
    `  sends until the last delivery: monotonic window ${monotonicFrom}-${Number(process.hrtime.bigint() / 1000n)}`,
  );
  const report = usage.stop();
  const rpcCallsPerSend = callsPer(callsBefore, await target.rpcCalls(), options.sends);
  await inBatches([senderClient, ...clients], 100, (c) => c.close());
  opened?.close();
  const result = {
    ...summarize(target, window, recipients.length, connectMs, errors, report.processes, memory),
    ...(rpcCallsPerSend === undefined ? {} : { rpcCallsPerSend }),
  };
  progress.note(describe(result));
  return result;
}

function describe(r: FanoutResult): string {
  return (
    `${r.target}: ${r.sends} sends to ${r.devices} devices: every device has it after p50 ${r.complete.p50.toFixed(1)} ms, ` +
    `p99 ${r.complete.p99.toFixed(1)} ms (per device p50 ${r.perDevice.p50.toFixed(1)}, p99 ${r.perDevice.p99.toFixed(1)} ms); ` +
    `incomplete ${r.incomplete}, missing ${r.missing}, dup ${r.duplicates}, errors ${JSON.stringify(r.errors)}` +
    (r.rpcCallsPerSend === undefined ? "" : `; internal calls per send: ${describeCalls(r.rpcCallsPerSend)}`)
  );
}

function fanoutReport(options: BenchOptions, results: readonly FanoutResult[]): BenchReport {
  const by = (name: TargetName) => results.find((r) => r.target === name);
  const parley = by("parley");
  const raw = by("raw");
  const relay = by("relay");
  const goals: Goal[] =
    parley === undefined
      ? []
      : [
          {
            goal: `S2 fan-out, ${options.members} members x ${options.devicesPerMember} devices`,
            target: "p99 < 1 s for 1,000 members x 5 devices, nothing lost",
            reached: `p99 ${parley.complete.p99.toFixed(0)} ms, ${parley.incomplete} incomplete sends`,
            met:
              options.members >= 1000 && options.devicesPerMember >= 5
                ? parley.complete.p99 < 1000 && parley.incomplete === 0
                : undefined,
          },
        ];
  const ratio = (a?: number, b?: number) =>
    a === undefined || b === undefined || a === 0 ? undefined : b / a;
  return {
    scenario: "s2",
    title: `S2 group fan-out (${options.members} x ${options.devicesPerMember} devices)`,
    tables: [
      {
        title: "Fan-out per target (time until every device has a send)",
        headers: [
          "target",
          "devices",
          "sends",
          "complete p50 ms",
          "complete p99 ms",
          "complete max ms",
          "device p50 ms",
          "device p99 ms",
          "incomplete",
          "missing",
          "dup",
          "errors",
          "server CPU %",
          "server peak RSS MB",
          "RSS per stream KB",
        ],
        rows: results.map((r) => {
          const server = r.usage.find((u) => u.name !== "loadgen");
          return [
            r.target,
            r.devices,
            r.sends,
            r.complete.p50,
            r.complete.p99,
            r.complete.max,
            r.perDevice.p50,
            r.perDevice.p99,
            r.incomplete,
            r.missing,
            r.duplicates,
            JSON.stringify(r.errors),
            server?.cpuPercent ?? Number.NaN,
            (server?.peakRssBytes ?? Number.NaN) / 2 ** 20,
            (r.memoryPerStream?.rss ?? Number.NaN) / 1024,
          ];
        }),
      },
    ],
    charts: [
      {
        title: "time until every device has a send",
        xLabel: "",
        yLabel: "ms (log)",
        logY: true,
        bars: { categories: ["p50", "p99", "max"] },
        threshold: { y: 1000, label: "1 s" },
        series: results.map((r) => ({
          name: r.target,
          points: [
            [0, r.complete.p50],
            [1, r.complete.p99],
            [2, r.complete.max],
          ] as const,
        })),
      },
    ],
    goals,
    ratios: {
      "parley / raw (p99 time to every device, inverse)": ratio(parley?.complete.p99, raw?.complete.p99),
      "parley / relay (p99 time to every device, inverse)": ratio(parley?.complete.p99, relay?.complete.p99),
    },
    notes: [
      `${options.sends} sends ${options.intervalMs} ms apart; Parley: one shared ciphertext (sender key) per send from the owner's first device through the SDK, every member device an SDK client; baselines: the same message written to every stream at once.`,
      "A ratio below 1 means Parley takes longer than the baseline (baseline time / Parley time).",
    ],
    data: { results },
  };
}
