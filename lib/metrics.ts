/**
 * Metrics: the meters every part of Parley records into, the Prometheus endpoint of each process,
 * and the instruments of the shared ports (rate limits, broker backlog).
 *
 * Instruments are made once (at module load or when a service starts) and never look anything up
 * when they record: they forward to the instruments of every attached MeterProvider, so recording
 * costs one call per provider (none when metrics are off). Providers can be attached at any time:
 * the Prometheus endpoint's (`startMetricsEndpoint`) and the OTLP one the OpenTelemetry SDK makes
 * from the environment (`startTelemetry`). Two providers rather than one because the OTLP metric
 * exporter is only reachable through the SDK's environment configuration, which takes no extra
 * reader.
 *
 * Attributes stay bounded: methods, outcomes, topics, kinds; never user, device, message or
 * conversation ids.
 */
import type { Server } from "node:http";
import { createServer } from "node:http";
import type { ELDHistogram } from "node:perf_hooks";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { isMainThread } from "node:worker_threads";
import type {
  Attributes,
  Counter,
  Histogram,
  Meter,
  MetricOptions,
  ObservableCallback,
  ObservableGauge,
  ObservableResult,
  UpDownCounter,
} from "@opentelemetry/api";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import type { Broker } from "./broker/broker.ts";
import { portVar, stringVar } from "./config.ts";
import type { RateLimiter } from "./rate-limit.ts";

/** What a MeterProvider must offer to be attached: meters by scope (the API's MeterProvider). */
export interface MeterSource {
  getMeter(name: string): ParleyMeter;
}

/** The part of the OpenTelemetry Meter API Parley uses. */
export type ParleyMeter = Pick<
  Meter,
  "createCounter" | "createUpDownCounter" | "createHistogram" | "createObservableGauge"
>;

/** Bucket bounds (seconds) of RPC durations: the OpenTelemetry RPC conventions' advice. */
export const RPC_DURATION_BUCKETS_S = [
  0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
] as const;

/**
 * Bucket bounds (seconds) of message latencies: edges at the targets (200 ms when both ends are
 * online, 10 s P99 under surge), and up to an hour for devices that ack late.
 */
export const MESSAGE_LATENCY_BUCKETS_S = [
  0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600,
] as const;

interface Bindable {
  readonly scope: string;
  bind(meters: readonly ParleyMeter[]): void;
}

const attached: MeterSource[] = [];
const instruments = new Map<string, Bindable>();

function metersOf(scope: string): ParleyMeter[] {
  return attached.map((provider) => provider.getMeter(scope));
}

function rebind(): void {
  for (const instrument of instruments.values()) instrument.bind(metersOf(instrument.scope));
  runtime.update(attached.length > 0);
}

/**
 * Makes every instrument, made before or after, record into `provider` too. Returns the detach
 * function (the provider keeps what it collected; shut it down yourself).
 */
export function attachMeterProvider(provider: MeterSource): () => void {
  attached.push(provider);
  rebind();
  return () => {
    const index = attached.indexOf(provider);
    if (index < 0) return;
    attached.splice(index, 1);
    rebind();
  };
}

type Adder = { add(value: number, attributes?: Attributes): void };
type Recorder = { record(value: number, attributes?: Attributes): void };

class ForwardingAdder implements Bindable, Counter, UpDownCounter {
  readonly scope: string;
  private readonly make: (meter: ParleyMeter) => Adder;
  private targets: Adder[] = [];

  constructor(scope: string, make: (meter: ParleyMeter) => Adder) {
    this.scope = scope;
    this.make = make;
  }

  bind(meters: readonly ParleyMeter[]): void {
    this.targets = meters.map(this.make);
  }

  add(value: number, attributes?: Attributes): void {
    for (const target of this.targets) target.add(value, attributes);
  }
}

class ForwardingRecorder implements Bindable, Histogram {
  readonly scope: string;
  private readonly make: (meter: ParleyMeter) => Recorder;
  private targets: Recorder[] = [];

  constructor(scope: string, make: (meter: ParleyMeter) => Recorder) {
    this.scope = scope;
    this.make = make;
  }

  bind(meters: readonly ParleyMeter[]): void {
    this.targets = meters.map(this.make);
  }

  record(value: number, attributes?: Attributes): void {
    for (const target of this.targets) target.record(value, attributes);
  }
}

class ForwardingObservable implements Bindable, ObservableGauge {
  readonly scope: string;
  private readonly make: (meter: ParleyMeter) => ObservableGauge;
  private readonly callbacks = new Set<ObservableCallback>();
  private bound: ObservableGauge[] = [];

  constructor(scope: string, make: (meter: ParleyMeter) => ObservableGauge) {
    this.scope = scope;
    this.make = make;
  }

  // One callback per provider that runs every registered one: each provider collects on its own.
  private readonly observeAll = async (result: ObservableResult): Promise<void> => {
    const outcomes = await Promise.allSettled([...this.callbacks].map(async (callback) => callback(result)));
    const failed = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
    if (failed.length > 0)
      throw new AggregateError(
        failed.map((f) => f.reason),
        "an observable callback failed",
      );
  };

  bind(meters: readonly ParleyMeter[]): void {
    for (const observable of this.bound) observable.removeCallback(this.observeAll);
    this.bound = meters.map((meter) => {
      const observable = this.make(meter);
      observable.addCallback(this.observeAll);
      return observable;
    });
  }

  addCallback(callback: ObservableCallback): void {
    this.callbacks.add(callback);
  }

  removeCallback(callback: ObservableCallback): void {
    this.callbacks.delete(callback);
  }
}

function instrument<T extends Bindable>(key: string, make: () => T): T {
  const existing = instruments.get(key);
  if (existing !== undefined) return existing as T;
  const created = make();
  created.bind(metersOf(created.scope));
  instruments.set(key, created);
  return created;
}

/**
 * The meter of one instrumentation scope (`parley.grpc`, `parley.delivery`...). Asking twice for
 * the same instrument (scope, kind and name) gives the same one, so services may make theirs each
 * time they start.
 */
export function getMeter(scope: string): ParleyMeter {
  const key = (kind: string, name: string) => `${scope}\u0000${kind}\u0000${name}`;
  return {
    createCounter: (name: string, options?: MetricOptions) =>
      instrument(
        key("counter", name),
        () => new ForwardingAdder(scope, (meter) => meter.createCounter(name, options)),
      ),
    createUpDownCounter: (name: string, options?: MetricOptions) =>
      instrument(
        key("updowncounter", name),
        () => new ForwardingAdder(scope, (meter) => meter.createUpDownCounter(name, options)),
      ),
    createHistogram: (name: string, options?: MetricOptions) =>
      instrument(
        key("histogram", name),
        () => new ForwardingRecorder(scope, (meter) => meter.createHistogram(name, options)),
      ),
    createObservableGauge: (name: string, options?: MetricOptions) =>
      instrument(
        key("observablegauge", name),
        () => new ForwardingObservable(scope, (meter) => meter.createObservableGauge(name, options)),
      ),
  };
}

// ---- the process itself: what an SRE looks at first when a reconnect storm or a backlog hits

const runtime = (() => {
  const meter = getMeter("parley.runtime");
  const delay = meter.createObservableGauge("nodejs.eventloop.delay.p99", {
    description: "99th percentile of event loop delay since the previous collection",
    unit: "s",
  });
  const memory = meter.createObservableGauge("process.memory.usage", {
    description: "Resident set size of the process",
    unit: "By",
  });
  let histogram: ELDHistogram | undefined;
  delay.addCallback((result) => {
    if (histogram === undefined || histogram.count === 0) return;
    result.observe(histogram.percentile(99) / 1e9);
    histogram.reset();
  });
  // The resident set is the whole process's: a worker thread reporting it too would count it twice.
  if (isMainThread) memory.addCallback((result) => result.observe(process.memoryUsage.rss()));
  return {
    /** The delay monitor runs a timer: only while some provider may collect it. */
    update(active: boolean): void {
      if (active && histogram === undefined) {
        histogram = monitorEventLoopDelay({ resolution: 10 });
        histogram.enable();
      } else if (!active && histogram !== undefined) {
        histogram.disable();
        histogram = undefined;
      }
    },
  };
})();

// ---- the Prometheus endpoint

/**
 * The variables of a process's Prometheus endpoint. `PARLEY_METRICS_PORT=0` turns it off (tests
 * do; deployments give every process its own port or pod).
 */
export function metricsConfigSpec(defaultPort: number) {
  return {
    metricsHost: stringVar("PARLEY_METRICS_HOST", { default: "127.0.0.1" }),
    metricsPort: portVar("PARLEY_METRICS_PORT", { default: defaultPort }),
  };
}

export interface MetricsEndpoint {
  /** `http://host:port/metrics`. */
  readonly url: string;
  readonly port: number;
  /** Stops serving and detaches its provider (what was counted is gone with it). */
  close(): Promise<void>;
}

/**
 * Serves every instrument in the Prometheus text format at `GET /metrics` on `host:port` (port 0
 * picks a free one: tests). The exporter's own server is not used: it cannot bind port 0 and
 * knows no host other than the one it is given at construction.
 *
 * Neither `target_info` nor scope labels are written: the scrape target (job, instance) already
 * says which process answered, and metric names carry their namespace.
 */
export async function startMetricsEndpoint(options: {
  readonly host: string;
  readonly port: number;
}): Promise<MetricsEndpoint> {
  const exporter = new PrometheusExporter({
    preventServerStart: true,
    withoutTargetInfo: true,
    withoutScopeInfo: true,
  });
  const provider = new MeterProvider({ readers: [exporter] });
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if ((req.method === "GET" || req.method === "HEAD") && path === "/metrics") {
      exporter.getMetricsRequestHandler(req, res);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found: metrics are served at /metrics\n");
  });
  let port: number;
  try {
    port = await listen(server, options.host, options.port);
  } catch (err) {
    await provider.shutdown();
    throw err;
  }
  const detach = attachMeterProvider(provider);
  const host =
    options.host.includes(":") && !options.host.startsWith("[") ? `[${options.host}]` : options.host;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}/metrics`,
    port,
    close() {
      closing ??= (async () => {
        detach();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        // A scraper keeps its connection alive; it would hold close() until it gave up.
        server.closeAllConnections();
        await closed;
        await provider.shutdown();
      })();
      return closing;
    },
  };
}

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      const address = server.address();
      resolve(typeof address === "object" && address !== null ? address.port : port);
    });
  });
}

// ---- shared ports

const rejections = getMeter("parley.rate_limit").createCounter("parley.rate_limit.rejections", {
  description: "Takes refused by a rate limiter, by limiter",
  unit: "{take}",
});

/**
 * The same limiter, counting its refusals as `parley.rate_limit.rejections{parley.rate_limit.name}`.
 * `name` is the limiter's, never the key's (a user or device).
 */
export function countRejections(limiter: RateLimiter, name: string): RateLimiter {
  const attributes = { "parley.rate_limit.name": name };
  return {
    async take(key, cost) {
      const decision = await limiter.take(key, cost);
      if (!decision.allowed) rejections.add(1, attributes);
      return decision;
    },
  };
}

const backlogGauge = getMeter("parley.broker").createObservableGauge("parley.broker.backlog", {
  description:
    "Messages not yet acknowledged by a durable subscription (Pulsar's msgBacklog), by topic and subscription",
  unit: "{message}",
});
const observedBrokers = new Map<Broker, { users: number; callback: ObservableCallback }>();

/**
 * Reports the backlog of every subscription `broker` knows (`Broker.backlog`, when the adapter has
 * it) as `parley.broker.backlog`. Several services sharing one broker (the embedded profile) report
 * it once. Returns the function that stops this caller's reporting.
 */
export function observeBrokerBacklog(broker: Broker): () => void {
  const backlog = broker.backlog?.bind(broker);
  if (backlog === undefined) return () => {};
  let entry = observedBrokers.get(broker);
  if (entry === undefined) {
    const callback: ObservableCallback = async (result) => {
      for (const b of await backlog()) {
        result.observe(b.messages, {
          "messaging.destination.name": b.topic,
          "messaging.destination.subscription.name": b.subscription,
        });
      }
    };
    entry = { users: 0, callback };
    observedBrokers.set(broker, entry);
    backlogGauge.addCallback(callback);
  }
  entry.users++;
  const owned = entry;
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    owned.users--;
    if (owned.users === 0) {
      backlogGauge.removeCallback(owned.callback);
      observedBrokers.delete(broker);
    }
  };
}
