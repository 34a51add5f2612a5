// How many gRPC calls the process under test served, by method: read from the mesh's own
// `rpc.server.call.duration` histogram (lib/grpc/metrics.ts), so each step can report calls per
// message and a change that adds a call per message shows in every run.
import { createNoopMeter } from "@opentelemetry/api";
import type { Histogram } from "@opentelemetry/sdk-metrics";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import { attachMeterProvider } from "../../lib/metrics.ts";

/** The one metrics scope the census needs; every other instrument stays a no-op, as without it. */
const GRPC_SCOPE = "parley.grpc";
const SERVER_CALLS = "rpc.server.call.duration";

class OnDemandReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

/** Starts counting; the function returns the calls served so far, by `rpc.method`. */
export function startRpcCensus(): () => Promise<Record<string, number>> {
  const reader = new OnDemandReader();
  const provider = new MeterProvider({ readers: [reader] });
  const noop = createNoopMeter();
  attachMeterProvider({ getMeter: (scope) => (scope === GRPC_SCOPE ? provider.getMeter(scope) : noop) });
  return async () => {
    const { resourceMetrics } = await reader.collect();
    const calls: Record<string, number> = {};
    for (const scope of resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        if (metric.descriptor.name !== SERVER_CALLS) continue;
        for (const point of metric.dataPoints) {
          const method = String(point.attributes["rpc.method"] ?? "unknown");
          calls[method] = (calls[method] ?? 0) + (point.value as Histogram).count;
        }
      }
    }
    return calls;
  };
}

/** Calls per unit (message or send) between two censuses, the busiest methods first. */
export function callsPer(
  before: Readonly<Record<string, number>> | undefined,
  after: Readonly<Record<string, number>> | undefined,
  units: number,
): Record<string, number> | undefined {
  if (before === undefined || after === undefined || units <= 0) return undefined;
  const rows = Object.entries(after)
    .map(
      ([method, count]) =>
        [method.replace(/^parley\.|^\//, ""), (count - (before[method] ?? 0)) / units] as const,
    )
    .filter(([, perUnit]) => perUnit > 0)
    .sort((a, b) => b[1] - a[1]);
  return Object.fromEntries(rows.map(([method, perUnit]) => [method, Math.round(perUnit * 1000) / 1000]));
}

/** "SendMessage 1, PushBatch 0.06, ..." for a progress line: the method's short name. */
export function describeCalls(perUnit: Readonly<Record<string, number>> | undefined, top = 6): string {
  if (perUnit === undefined) return "";
  return Object.entries(perUnit)
    .slice(0, top)
    .map(([method, n]) => `${method.split("/").at(-1)} ${n}`)
    .join(", ");
}
