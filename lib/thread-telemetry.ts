/**
 * Telemetry of a service on a worker thread (the embedded profile runs history on its own thread,
 * tools/mesh/service-thread.ts). A worker has its own copy of every module, so its instruments and
 * its tracer would otherwise go nowhere the operator looks: the process has one Prometheus
 * endpoint, one trace file, and tests read spans from exporters in the main thread.
 *
 * - Metric records cross to the main thread and are replayed into the same instruments there
 *   (lib/metrics.ts `getMeter`), so each is counted once, in every provider the main thread has
 *   (Prometheus, OTLP). Gauges are observed in the worker once a second and reported by the main
 *   thread with `parley.thread` set, since a gauge of the same name means another thing there (the
 *   main thread's event loop is not the worker's).
 * - Spans go where the main thread's go: when it has processors of ours (a test's in-memory
 *   exporter, the trace file), finished sampled spans cross and are handed to them; when spans
 *   leave over OTLP, the worker's SDK exports its own from the same environment.
 */
import type { MessagePort } from "node:worker_threads";
import type {
  Attributes,
  HrTime,
  MetricOptions,
  ObservableCallback,
  ObservableGauge,
  ObservableResult,
  SpanContext,
  SpanKind,
  SpanStatus,
} from "@opentelemetry/api";
import { createTraceState, TraceFlags } from "@opentelemetry/api";
import type { Resource } from "@opentelemetry/resources";
import { resourceFromAttributes } from "@opentelemetry/resources";
import type { ReadableSpan, SpanProcessor, TimedEvent } from "@opentelemetry/sdk-trace";
import type { MeterSource, ParleyMeter } from "./metrics.ts";
import { attachMeterProvider, getMeter } from "./metrics.ts";
import type { StopTelemetry } from "./telemetry.ts";
import { spanProcessorsForThreads, startTelemetry, telemetryForThreads } from "./telemetry.ts";

/** What the worker needs to know about the main thread's telemetry (it travels in workerData). */
export interface ThreadTelemetrySettings {
  /** The thread's name, the `parley.thread` of its gauges. */
  readonly thread: string;
  readonly spans: "off" | "forward" | "own";
  readonly serviceName: string;
}

type InstrumentKind = "counter" | "updowncounter" | "histogram" | "observablegauge";

interface InstrumentDefinition {
  readonly id: number;
  readonly scope: string;
  readonly kind: InstrumentKind;
  readonly name: string;
  readonly options: MetricOptions | undefined;
}

/** One add or record: instrument id, value, attributes. */
type MetricRecord = readonly [number, number, Attributes | undefined];

interface GaugeObservations {
  readonly id: number;
  readonly points: readonly (readonly [number, Attributes | undefined])[];
}

interface PlainSpanContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly traceFlags: number;
  readonly isRemote: boolean | undefined;
  /** TraceState is a class; it crosses serialized. */
  readonly traceState: string | undefined;
}

interface PlainSpan {
  readonly name: string;
  readonly kind: SpanKind;
  readonly context: PlainSpanContext;
  readonly parent: PlainSpanContext | undefined;
  readonly startTime: HrTime;
  readonly endTime: HrTime;
  readonly duration: HrTime;
  readonly status: SpanStatus;
  readonly attributes: Attributes;
  readonly links: readonly {
    readonly context: PlainSpanContext;
    readonly attributes: Attributes | undefined;
    readonly droppedAttributesCount: number | undefined;
  }[];
  readonly events: readonly TimedEvent[];
  readonly scope: { readonly name: string; readonly version?: string; readonly schemaUrl?: string };
  readonly droppedAttributesCount: number;
  readonly droppedEventsCount: number;
  readonly droppedLinksCount: number;
}

/** Everything a worker sends, in one message per flush so definitions arrive before their records. */
interface TelemetryBatch {
  readonly instruments: readonly InstrumentDefinition[];
  readonly records: readonly MetricRecord[];
  readonly gauges: readonly GaugeObservations[];
  readonly spans: readonly PlainSpan[];
  /** The worker's resource attributes, with its first spans. */
  readonly resource: Attributes | undefined;
}

// ---- the main thread's side

export interface ThreadTelemetryLink {
  /** For the worker's `startThreadTelemetry`. */
  readonly settings: ThreadTelemetrySettings;
  /** Stops reporting the worker's gauges and closes the port (what was recorded stays). */
  close(): void;
}

/**
 * Takes a worker's telemetry from `port` into this thread's instruments and span processors.
 * Call it before the worker starts, and pass `settings` to it.
 */
export function receiveThreadTelemetry(port: MessagePort, thread: string): ThreadTelemetryLink {
  const settings: ThreadTelemetrySettings = { thread, ...telemetryForThreads() };
  const adders = new Map<number, { add(value: number, attributes?: Attributes): void }>();
  const recorders = new Map<number, { record(value: number, attributes?: Attributes): void }>();
  const gauges = new Map<number, { points: GaugeObservations["points"] }>();
  const unobserve: (() => void)[] = [];
  let resource: Resource | undefined;

  const define = (definition: InstrumentDefinition) => {
    const meter = getMeter(definition.scope);
    const { id, name, options } = definition;
    switch (definition.kind) {
      case "counter":
        adders.set(id, meter.createCounter(name, options));
        break;
      case "updowncounter":
        adders.set(id, meter.createUpDownCounter(name, options));
        break;
      case "histogram":
        recorders.set(id, meter.createHistogram(name, options));
        break;
      case "observablegauge": {
        const latest = { points: [] as GaugeObservations["points"] };
        gauges.set(id, latest);
        const gauge = meter.createObservableGauge(name, options);
        const callback: ObservableCallback = (result) => {
          for (const [value, attributes] of latest.points)
            result.observe(value, { ...attributes, "parley.thread": thread });
        };
        gauge.addCallback(callback);
        unobserve.push(() => gauge.removeCallback(callback));
        break;
      }
    }
  };

  port.on("message", (batch: TelemetryBatch) => {
    for (const definition of batch.instruments) define(definition);
    for (const [id, value, attributes] of batch.records) {
      adders.get(id)?.add(value, attributes);
      recorders.get(id)?.record(value, attributes);
    }
    for (const observed of batch.gauges) {
      const gauge = gauges.get(observed.id);
      if (gauge !== undefined) gauge.points = observed.points;
    }
    if (batch.resource !== undefined) resource = resourceFromAttributes(batch.resource);
    if (batch.spans.length === 0) return;
    const processors = spanProcessorsForThreads();
    const spanResource = resource ?? resourceFromAttributes({});
    for (const plain of batch.spans) {
      const span = toReadableSpan(plain, spanResource);
      for (const processor of processors) processor.onEnd(span);
    }
  });
  return {
    settings,
    close() {
      for (const stop of unobserve.splice(0)) stop();
      port.close();
    },
  };
}

function toSpanContext(plain: PlainSpanContext): SpanContext {
  return {
    traceId: plain.traceId,
    spanId: plain.spanId,
    traceFlags: plain.traceFlags,
    ...(plain.isRemote === undefined ? {} : { isRemote: plain.isRemote }),
    ...(plain.traceState === undefined ? {} : { traceState: createTraceState(plain.traceState) }),
  };
}

function toReadableSpan(plain: PlainSpan, resource: Resource): ReadableSpan {
  const context = toSpanContext(plain.context);
  return {
    name: plain.name,
    kind: plain.kind,
    spanContext: () => context,
    ...(plain.parent === undefined ? {} : { parentSpanContext: toSpanContext(plain.parent) }),
    startTime: plain.startTime,
    endTime: plain.endTime,
    duration: plain.duration,
    status: plain.status,
    attributes: plain.attributes,
    links: plain.links.map((link) => ({
      context: toSpanContext(link.context),
      ...(link.attributes === undefined ? {} : { attributes: link.attributes }),
      ...(link.droppedAttributesCount === undefined
        ? {}
        : { droppedAttributesCount: link.droppedAttributesCount }),
    })),
    events: [...plain.events],
    ended: true,
    resource,
    instrumentationScope: plain.scope,
    droppedAttributesCount: plain.droppedAttributesCount,
    droppedEventsCount: plain.droppedEventsCount,
    droppedLinksCount: plain.droppedLinksCount,
  };
}

// ---- the worker's side

/** How often a worker sends its metric records: soon enough for a scrape right after. */
const FLUSH_INTERVAL_MS = 250;
/** Gauges are observed every this many flushes (once a second). */
const GAUGE_EVERY_FLUSHES = 4;

/**
 * Starts a worker thread's telemetry as `settings` say (see the module comment) and sends its
 * records over `port`. Call it first in the worker, before anything makes spans or instruments.
 * The returned stop flushes everything that is left.
 */
export function startThreadTelemetry(port: MessagePort, settings: ThreadTelemetrySettings): StopTelemetry {
  const instruments: InstrumentDefinition[] = [];
  const records: MetricRecord[] = [];
  const spans: PlainSpan[] = [];
  const known = new Map<string, number>();
  const gaugeCallbacks = new Map<number, Set<ObservableCallback>>();
  let resource: Resource | undefined;
  let resourceSent = false;
  let flushes = 0;
  let spansScheduled = false;

  const flush = async (withGauges: boolean) => {
    const gauges = withGauges ? await observeGauges(gaugeCallbacks) : [];
    let resourceAttributes: Attributes | undefined;
    if (!resourceSent && resource !== undefined) {
      // The SDK's detectors fill some attributes in asynchronously.
      await resource.waitForAsyncAttributes?.();
      resourceAttributes = { ...resource.attributes };
      resourceSent = true;
    }
    if (instruments.length + records.length + spans.length + gauges.length === 0) return;
    port.postMessage({
      instruments: instruments.splice(0),
      records: records.splice(0),
      gauges,
      spans: spans.splice(0),
      resource: resourceAttributes,
    } satisfies TelemetryBatch);
  };

  const instrumentId = (scope: string, kind: InstrumentKind, name: string, options?: MetricOptions) => {
    const key = `${scope}\u0000${kind}\u0000${name}`;
    let id = known.get(key);
    if (id === undefined) {
      id = known.size + 1;
      known.set(key, id);
      instruments.push({ id, scope, kind, name, options });
    }
    return id;
  };
  const adder = (id: number) => ({
    add: (value: number, attributes?: Attributes) => void records.push([id, value, attributes]),
  });
  const forwardingMeters: MeterSource = {
    getMeter: (scope): ParleyMeter => ({
      createCounter: (name, options) => adder(instrumentId(scope, "counter", name, options)),
      createUpDownCounter: (name, options) => adder(instrumentId(scope, "updowncounter", name, options)),
      createHistogram: (name, options) => {
        const id = instrumentId(scope, "histogram", name, options);
        return {
          record: (value: number, attributes?: Attributes) => void records.push([id, value, attributes]),
        };
      },
      createObservableGauge: (name, options): ObservableGauge => {
        const id = instrumentId(scope, "observablegauge", name, options);
        let callbacks = gaugeCallbacks.get(id);
        if (callbacks === undefined) {
          callbacks = new Set();
          gaugeCallbacks.set(id, callbacks);
        }
        const own = callbacks;
        return {
          addCallback: (callback) => void own.add(callback),
          removeCallback: (callback) => void own.delete(callback),
        };
      },
    }),
  };
  const detachMetrics = attachMeterProvider(forwardingMeters);

  const forwardSpans: SpanProcessor = {
    onStart() {},
    onEnd(span) {
      if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
      resource ??= span.resource;
      spans.push(toPlainSpan(span));
      // At the end of this turn, with every span it ended: the main thread's processors see a
      // span about when they would see one of their own thread's (tests wait on them).
      if (!spansScheduled) {
        spansScheduled = true;
        setImmediate(() => {
          spansScheduled = false;
          void flush(false);
        });
      }
    },
    forceFlush: () => flush(false),
    shutdown: () => flush(false),
  };
  let stopSdk: StopTelemetry = async () => {};
  if (settings.spans !== "off") {
    // The worker's copy of the environment: the main thread writes the trace file, not this one.
    delete process.env.PARLEY_TRACE_FILE;
    stopSdk = startTelemetry({
      serviceName: settings.serviceName,
      exportMetrics: false,
      ...(settings.spans === "forward" ? { spanProcessors: [forwardSpans] } : {}),
    });
  }
  const timer = setInterval(() => void flush(++flushes % GAUGE_EVERY_FLUSHES === 0), FLUSH_INTERVAL_MS);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await stopSdk();
    detachMetrics();
    await flush(false);
  };
}

async function observeGauges(gauges: ReadonlyMap<number, ReadonlySet<ObservableCallback>>) {
  const observed: GaugeObservations[] = [];
  for (const [id, callbacks] of gauges) {
    const points: [number, Attributes | undefined][] = [];
    const result: ObservableResult = {
      observe: (value, attributes) => void points.push([value, attributes]),
    };
    // A failing callback costs its own points only, as it would in the SDK.
    await Promise.allSettled([...callbacks].map(async (callback) => callback(result)));
    observed.push({ id, points });
  }
  return observed;
}

function toPlainSpanContext(context: SpanContext): PlainSpanContext {
  return {
    traceId: context.traceId,
    spanId: context.spanId,
    traceFlags: context.traceFlags,
    isRemote: context.isRemote,
    traceState: context.traceState?.serialize(),
  };
}

function toPlainSpan(span: ReadableSpan): PlainSpan {
  const scope = span.instrumentationScope;
  return {
    name: span.name,
    kind: span.kind,
    context: toPlainSpanContext(span.spanContext()),
    parent: span.parentSpanContext === undefined ? undefined : toPlainSpanContext(span.parentSpanContext),
    startTime: span.startTime,
    endTime: span.endTime,
    duration: span.duration,
    status: span.status,
    attributes: span.attributes,
    links: span.links.map((link) => ({
      context: toPlainSpanContext(link.context),
      attributes: link.attributes,
      droppedAttributesCount: link.droppedAttributesCount,
    })),
    events: span.events,
    scope: {
      name: scope.name,
      ...(scope.version === undefined ? {} : { version: scope.version }),
      ...(scope.schemaUrl === undefined ? {} : { schemaUrl: scope.schemaUrl }),
    },
    droppedAttributesCount: span.droppedAttributesCount,
    droppedEventsCount: span.droppedEventsCount,
    droppedLinksCount: span.droppedLinksCount,
  };
}
