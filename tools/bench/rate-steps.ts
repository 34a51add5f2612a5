import type { DeliveryLog } from "./delivery-log.ts";
import { waitUntil } from "./delivery-log.ts";
import type { LatencySummary } from "./latency.ts";
import type { ProcessUsage } from "./proc-stats.ts";
import { watchUsage } from "./proc-stats.ts";
import type { Progress } from "./progress.ts";
import { callsPer, describeCalls } from "./rpc-census.ts";
import type { StepRunner } from "./runners.ts";

/** p99 send -> display that a step must stay under to count (issue 8: both ends online, normal load). */
export const P99_LIMIT_MS = 200;

/** A target delivering less than this share of what is offered is saturated: no higher step. */
const SATURATED_BELOW = 0.95;
/** Nor is there one after a p99 this far past any target. */
const SATURATED_P99_MS = 2_000;

export interface StepResult {
  readonly rate: number;
  readonly durationMs: number;
  readonly sent: number;
  /** Messages handed over per second (below `rate` when the load generator could not keep up). */
  readonly offeredPerSec: number;
  readonly delivered: number;
  /** Deliveries per second from the step's start to its last delivery. */
  readonly deliveredPerSec: number;
  readonly latency: LatencySummary;
  readonly lost: number;
  readonly duplicates: number;
  readonly errors: Readonly<Record<string, number>>;
  /** From the step's end until its last delivery, ms. */
  readonly drainMs: number;
  readonly passed: boolean;
  /** The step on the monotonic clock (us), as `--cpu-prof` profiles time their samples. */
  readonly monotonicUs: { readonly from: number; readonly to: number };
  readonly usage: readonly ProcessUsage[];
  readonly machine: { busyPercent: number; othersPercent: number; loadavg: readonly number[] };
  /** The mesh's internal gRPC calls per message sent, by method (embedded Parley only). */
  readonly rpcCallsPerMessage?: Readonly<Record<string, number>>;
}

export interface RateStepsResult {
  readonly steps: readonly StepResult[];
  /** The highest rate that passed (p99 under the limit, nothing lost, no errors). */
  readonly knee: number | undefined;
  /** The most delivered per second in a step that lost nothing and kept up (whatever its p99). */
  readonly maxSustained: number | undefined;
  /** What the knee step delivered per second. */
  readonly kneeDelivered: number | undefined;
}

/**
 * Raises the offered rate step by step until the target saturates (loses or refuses something,
 * falls behind the offered rate, or its p99 passes 2 s): every step sends for `stepMs`, then
 * waits up to `settleMs` for the stragglers. The knee is the highest step with p99 under
 * `p99LimitMs`, nothing lost and nothing refused.
 */
export async function runRateSteps(options: {
  readonly label: string;
  readonly runner: StepRunner;
  readonly log: DeliveryLog;
  readonly progress: Progress;
  readonly rates: readonly number[];
  readonly stepMs: number;
  readonly settleMs: number;
  readonly pids: Readonly<Record<string, number>>;
  readonly firstSeq: number;
  readonly p99LimitMs?: number;
  /** Run every rate even after a failure (S4 runs one). */
  readonly keepGoing?: boolean;
  /** The target's internal gRPC calls so far, by method, when it can tell. */
  readonly rpcCalls?: () => Promise<Record<string, number> | undefined>;
}): Promise<RateStepsResult & { readonly nextSeq: number }> {
  const limit = options.p99LimitMs ?? P99_LIMIT_MS;
  const steps: StepResult[] = [];
  let seq = options.firstSeq;
  for (const rate of options.rates) {
    const window = options.log.open(`${options.label}@${rate}`, seq);
    const callsBefore = await options.rpcCalls?.();
    const usage = watchUsage({ ...options.pids, loadgen: process.pid });
    const startedAt = performance.now();
    const started = performance.timeOrigin + startedAt;
    const monotonicFrom = Number(process.hrtime.bigint() / 1000n);
    const stopTracking = options.progress.track(
      () =>
        `${options.label} ${rate} msg/s: ${window.delivered} delivered, p99 ${window.latency.percentile(99).toFixed(1)} ms, ${((performance.now() - startedAt) / 1000).toFixed(0)} s`,
    );
    const sent = await options.runner.run(rate, options.stepMs, seq);
    // The drain counts from the end of the offer, not from when every send was answered.
    const endedAt = started + sent.elapsedMs;
    const monotonicTo = Number(process.hrtime.bigint() / 1000n);
    window.endSeq = sent.endSeq;
    window.refused = sent.refused;
    seq = sent.endSeq;
    await waitUntil(() => window.missing() <= 0, options.settleMs);
    stopTracking();
    const report = usage.stop();
    const rpcCallsPerMessage = callsPer(
      callsBefore,
      await options.rpcCalls?.(),
      sent.endSeq - window.firstSeq,
    );
    const latency = window.latency.summary();
    const lost = Math.max(0, window.missing());
    const errorCount = Object.values(sent.errors).reduce((a, b) => a + b, 0);
    const passed = lost === 0 && errorCount === 0 && latency.count > 0 && latency.p99 < limit;
    const deliverySpan = (window.lastDeliveryAt - started) / 1000;
    const result: StepResult = {
      rate,
      durationMs: sent.elapsedMs,
      sent: sent.endSeq - window.firstSeq,
      offeredPerSec: ((sent.endSeq - window.firstSeq) * 1000) / sent.elapsedMs,
      delivered: window.delivered,
      deliveredPerSec: deliverySpan > 0 ? window.delivered / deliverySpan : 0,
      latency,
      lost,
      duplicates: window.duplicates,
      errors: sent.errors,
      drainMs: Math.max(0, window.lastDeliveryAt - endedAt),
      passed,
      monotonicUs: { from: monotonicFrom, to: monotonicTo },
      usage: report.processes,
      machine: {
        busyPercent: report.machine.busyPercent,
        othersPercent: report.machine.othersPercent,
        loadavg: report.machine.loadavgEnd,
      },
      ...(rpcCallsPerMessage === undefined ? {} : { rpcCallsPerMessage }),
    };
    steps.push(result);
    const cpu = report.processes.map((p) => `${p.name} ${p.cpuPercent.toFixed(0)}%`).join(", ");
    options.progress.note(
      `${options.label} ${rate} msg/s: offered ${result.offeredPerSec.toFixed(0)}/s, delivered ${result.deliveredPerSec.toFixed(0)}/s, ` +
        `p50 ${latency.p50.toFixed(1)} p99 ${latency.p99.toFixed(1)} max ${latency.max.toFixed(1)} ms, lost ${lost}, ` +
        `errors ${errorCount}, dup ${window.duplicates}; cpu ${cpu}; others ${report.machine.othersPercent.toFixed(0)}% -> ${passed ? "ok" : "FAIL"} ` +
        `(monotonic window ${monotonicFrom}-${monotonicTo})` +
        (rpcCallsPerMessage === undefined
          ? ""
          : `; internal calls per message: ${describeCalls(rpcCallsPerMessage)}`),
    );
    // A p99 over the limit on a shared machine may be a neighbour's burst: go on while the target
    // still keeps up (nothing lost, delivering what is offered), stop once it saturates.
    const saturated =
      lost > 0 ||
      errorCount > 0 ||
      result.deliveredPerSec < SATURATED_BELOW * result.offeredPerSec ||
      latency.p99 > SATURATED_P99_MS;
    if (saturated && options.keepGoing !== true) break;
  }
  const passing = steps.filter((s) => s.passed);
  const best = passing.at(-1);
  return {
    steps,
    knee: best?.rate,
    kneeDelivered: best?.deliveredPerSec,
    maxSustained: steps
      .filter(keptUp)
      .reduce<number | undefined>((max, s) => Math.max(max ?? 0, s.deliveredPerSec), undefined),
    nextSeq: seq,
  };
}

/** A step that lost nothing and delivered at least 95% of what was offered (whatever its p99). */
export function keptUp(step: Pick<StepResult, "lost" | "deliveredPerSec" | "offeredPerSec">): boolean {
  return step.lost === 0 && step.deliveredPerSec >= SATURATED_BELOW * step.offeredPerSec;
}
