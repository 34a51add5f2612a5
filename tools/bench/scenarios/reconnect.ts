import { ContentKind } from "../../../gen/parley/common/v1/envelope_pb.ts";
import { createDeliveryLog, waitUntil } from "../delivery-log.ts";
import type { BenchOptions, TargetName } from "../options.ts";
import type { ProcessUsage } from "../proc-stats.ts";
import { watchUsage } from "../proc-stats.ts";
import type { Progress } from "../progress.ts";
import type { BenchReport, Goal } from "../report.ts";
import { errorKey } from "../runners.ts";
import { anonymousDevices, createSdkPairs, openStreams } from "../scenario-kit.ts";
import { nowMs, stampPayload } from "../stamp.ts";
import type { Target } from "../targets.ts";
import { startTarget } from "../targets.ts";

interface ReconnectResult {
  readonly target: TargetName;
  readonly devices: number;
  readonly socketsDropped: number;
  /** From the drop until every device's stream was open again. */
  readonly reconnectAllMs: number;
  /** From the drop until every device had everything sent to it meanwhile. */
  readonly currentAllMs: number;
  readonly messages: number;
  readonly missing: number;
  readonly duplicates: number;
  readonly errors: Record<string, number>;
  readonly usage: readonly ProcessUsage[];
}

/** S5: every connection cut at once; how long until every device is back and current. */
export async function runReconnect(options: BenchOptions, progress: Progress): Promise<BenchReport> {
  const results: ReconnectResult[] = [];
  for (const name of options.targets) {
    progress.note(`== s5 on ${name}: ${options.devices} devices ==`);
    const target = await startTarget(name, options);
    try {
      const result =
        name === "parley"
          ? await stormOnParley(target, options, progress)
          : await stormOnBaseline(target, options);
      progress.note(
        `${name}: ${result.socketsDropped} connections cut; all ${result.devices} streams back after ${result.reconnectAllMs.toFixed(0)} ms, ` +
          `all current after ${result.currentAllMs.toFixed(0)} ms; missing ${result.missing}, dup ${result.duplicates}, errors ${JSON.stringify(result.errors)}`,
      );
      results.push(result);
    } finally {
      await target.stop();
    }
  }
  const parley = results.find((r) => r.target === "parley");
  const raw = results.find((r) => r.target === "raw");
  const goals: Goal[] =
    parley === undefined
      ? []
      : [
          {
            goal: `S5 reconnect storm, ${parley.devices} devices`,
            target: "every device current again, nothing lost (no figure set by the issue)",
            reached: `${(parley.currentAllMs / 1000).toFixed(1)} s, missing ${parley.missing}`,
            met: parley.missing === 0 ? undefined : false,
          },
        ];
  return {
    scenario: "s5",
    title: `S5 reconnect storm (${options.devices} devices)`,
    tables: [
      {
        title: "Reconnect storm",
        headers: [
          "target",
          "devices",
          "connections cut",
          "all reconnected ms",
          "all current ms",
          "messages",
          "missing",
          "dup",
          "errors",
          "server CPU %",
        ],
        rows: results.map((r) => [
          r.target,
          r.devices,
          r.socketsDropped,
          r.reconnectAllMs,
          r.currentAllMs,
          r.messages,
          r.missing,
          r.duplicates,
          JSON.stringify(r.errors),
          r.usage.find((u) => u.name !== "loadgen")?.cpuPercent ?? Number.NaN,
        ]),
      },
    ],
    charts: [
      {
        title: "time after every connection was cut",
        xLabel: "",
        yLabel: "ms (log)",
        logY: true,
        bars: { categories: ["all reconnected", "all current"] },
        series: results.map((r) => ({
          name: r.target,
          points: [
            [0, r.reconnectAllMs],
            [1, r.currentAllMs],
          ] as const,
        })),
      },
    ],
    goals,
    ratios: {
      "parley / raw (time until all current)":
        parley === undefined || raw === undefined || raw.currentAllMs === 0
          ? undefined
          : parley.currentAllMs / raw.currentAllMs,
    },
    notes: [
      "Parley: SDK clients in 1:1 pairs; at the cut every device's partner sends one message (the SDK holds it until its stream is back), so 'current' means reconnected, resumed from the cursor and shown that message. The SDK reconnects after full-jitter backoff (500 ms base); the stream resumes from the persisted cursor.",
      "Baselines: the minimal clients reopen every stream at once (no backoff); 'current' is when each reopened stream got a message written after all were back.",
    ],
    data: { results },
  };
}

async function stormOnBaseline(target: Target, options: BenchOptions): Promise<ReconnectResult> {
  const log = createDeliveryLog();
  const devices = anonymousDevices(options.devices);
  const first = await openStreams(target, devices, options, undefined);
  const usage = watchUsage({ ...target.pids, loadgen: process.pid });
  const t0 = nowMs();
  const dropped = first.pool.dropAll();
  await Promise.all(first.streams.map((s) => s.ended));
  const again = await openStreams(target, devices, options, log, { pool: first.pool });
  const reconnectAllMs = nowMs() - t0;
  const window = log.open("after the storm", 0);
  // Before the broadcast: deliveries start arriving while the request is still being answered.
  window.expectPerSeq = again.streams.length - again.failed;
  const sent = await (target.child as NonNullable<Target["child"]>).request<{ endSeq: number }>({
    type: "broadcast",
    sends: 1,
    intervalMs: 0,
    firstSeq: 0,
  });
  window.endSeq = sent.endSeq;
  await waitUntil(() => window.missing() <= 0, options.settleMs);
  const report = usage.stop();
  again.close();
  return {
    target: target.name,
    devices: devices.length,
    socketsDropped: dropped,
    reconnectAllMs,
    currentAllMs: window.lastDeliveryAt - t0,
    messages: window.expected(),
    missing: Math.max(0, window.missing()) + again.failed,
    duplicates: window.duplicates,
    errors: again.failed > 0 ? { "stream did not reopen": again.failed } : {},
    usage: report.processes,
  };
}

async function stormOnParley(
  target: Target,
  options: BenchOptions,
  progress: Progress,
): Promise<ReconnectResult> {
  const log = createDeliveryLog();
  const pairs = await createSdkPairs(
    target,
    { ...options, direction: "both" },
    log,
    progress,
    options.devices,
  );
  await pairs.connectAll();
  const readyAt = new Map<unknown, number>();
  let t0 = Number.POSITIVE_INFINITY;
  for (const client of pairs.clients.values()) {
    client.onStateChange((change) => {
      if (change.state === "ready" && nowMs() >= t0) readyAt.set(client, nowMs());
    });
  }
  const window = log.open("storm", 0);
  const errors: Record<string, number> = {};
  const usage = watchUsage({ ...target.pids, loadgen: process.pid });
  t0 = nowMs();
  const dropped = pairs.transports.dropAll();
  // Every device gets one message from its partner, sent at the moment of the cut.
  const sends = pairs.senders.map((sender, seq) =>
    sender.client
      .send({
        conversationId: sender.conversationId,
        envelope: {
          kind: ContentKind.TEXT,
          payload: {
            case: "perDevice",
            value: {
              recipients: sender.recipients.map((d) => ({
                userId: d.userId,
                devices: [
                  { deviceId: d.deviceId, ciphertext: stampPayload(seq, d.index, options.payloadBytes) },
                ],
              })),
            },
          },
        },
      })
      .catch((err: unknown) => {
        const key = errorKey(err);
        errors[key] = (errors[key] ?? 0) + 1;
        window.refused++;
      }),
  );
  window.endSeq = pairs.senders.length;
  await Promise.all(sends);
  const allBack = await waitUntil(() => readyAt.size >= pairs.clients.size, options.settleMs);
  await waitUntil(() => window.missing() <= 0, options.settleMs);
  const report = usage.stop();
  const reconnectAllMs = allBack ? Math.max(...readyAt.values()) - t0 : Number.NaN;
  await pairs.closeAll();
  return {
    target: "parley",
    devices: pairs.clients.size,
    socketsDropped: dropped,
    reconnectAllMs,
    currentAllMs: Math.max(window.lastDeliveryAt, reconnectAllMs + t0) - t0,
    messages: window.expected(),
    missing: Math.max(0, window.missing()),
    duplicates: window.duplicates,
    errors: allBack ? errors : { ...errors, "not reconnected": pairs.clients.size - readyAt.size },
    usage: report.processes,
  };
}
