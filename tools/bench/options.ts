import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { repoRoot } from "./child.ts";

export const SCENARIOS = ["s1", "push", "s2", "s3", "s4", "s5"] as const;
export type Scenario = (typeof SCENARIOS)[number];
export const TARGETS = ["raw", "relay", "parley"] as const;
export type TargetName = (typeof TARGETS)[number];

export interface BenchOptions {
  readonly scenario: Scenario;
  readonly profile: "embedded" | "cluster";
  /** Cluster: the edges' public URLs (devices are spread over them). */
  readonly edgeUrls: readonly string[];
  /** Cluster, push scenario: an edge's EdgePushService host:port. */
  readonly pushAddress: string | undefined;
  /** Cluster: the folder whose dev-issuer.jwk the cluster's edges trust (the token source). */
  readonly dataDir: string | undefined;
  /** Cluster: processes to watch, name -> pid. */
  readonly pids: Readonly<Record<string, number>>;
  readonly targets: readonly TargetName[];
  readonly quick: boolean;
  readonly devices: number;
  readonly rates: readonly number[];
  readonly rate: number | undefined;
  readonly stepMs: number;
  readonly settleMs: number;
  readonly durationMs: number;
  readonly levels: readonly number[];
  readonly streamsPerConnection: number;
  readonly connections: number;
  readonly sourceAddresses: number;
  readonly members: number;
  readonly devicesPerMember: number;
  readonly sends: number;
  readonly intervalMs: number;
  readonly payloadBytes: number;
  readonly direction: "both" | "one";
  /** S2 on Parley: the receiving devices as SDK clients, or as minimal clients that ack. */
  readonly clients: "sdk" | "minimal";
  readonly heartbeatMs: number | undefined;
  readonly cpuProf: boolean;
  /** Embedded: the mesh child's V8 old-space limit in MB (Node's default: a quarter of RAM, at most ~4 GB). */
  readonly maxOldSpaceMb: number | undefined;
  /** S3 on an embedded target: a heap snapshot before the first stream and after each level. */
  readonly heapSnapshot: boolean;
  /** Experiment: the embedded stores' `PRAGMA synchronous` (Parley uses FULL). */
  readonly sqliteSynchronous: "full" | "normal" | undefined;
  /** Embedded: where the mesh child's log lines go (appended), at PARLEY_LOG_LEVEL or warn. */
  readonly meshLog: string | undefined;
  readonly outDir: string;
  readonly tag: string;
}

export const USAGE = `npm run bench -- <scenario> [options]

scenarios
  s1     throughput knee: 1:1 conversations among --devices online devices, the offered rate raised
         step by step (--rates); highest rate with p99 < 200 ms and nothing lost
  push   the edge's push path alone (delivery -> edge -> device, no engines): PushBatch straight to
         the edge, S1's shape, against the raw and relay baselines (target >= 50% of raw)
  s2     group fan-out: --members x --devices-per-member devices, --sends sends --interval apart;
         time until every device has each one
  s3     idle streams: --levels (e.g. 10000,50000,100000) connected with heartbeats; memory per
         stream and CPU at rest of the process holding them; where it breaks
  s4     surge: --rate (default 10x the last S1 knee in --out) for --duration; nothing lost, p99,
         drain time
  s5     reconnect storm: drop every stream of --devices devices at once; time until all are current

options
  --profile embedded|cluster   embedded (default): the mesh in a child process on a temp folder
  --edge-url URL               cluster: an edge (repeat for several); needs --data-dir
  --data-dir DIR               cluster: the folder whose dev-issuer.jwk the edges trust
  --push-address HOST:PORT     cluster, push: an edge's EdgePushService
  --pid NAME=PID               cluster: a process to measure (repeat)
  --targets raw,relay,parley   which to run (default all; baselines run first)
  --devices N  --rates R1,R2,..  --rate R  --step-duration S  --settle S  --duration S
  --levels N1,N2,..  --streams-per-connection N  --connections N  --source-addresses N
  --members N  --devices-per-member N  --sends N  --interval MS  --payload BYTES
  --direction both|one         s1/s4: both users of a pair write (default), or one
  --clients sdk|minimal        s2 on Parley: the receiving devices as SDK clients (default), or as
                               minimal clients that ack each message (the mesh's own figure)
  --heartbeat-ms MS            embedded: the edge's heartbeat interval (s3)
  --cpu-prof                   embedded: run the mesh child under --cpu-prof (profiles in --out/profiles)
  --max-old-space-size MB      embedded: the mesh child's V8 heap limit (100K idle streams hold ~3 GB)
  --heap-snapshot              s3, embedded: heap snapshots of the process under test before the first
                               stream and after each level (in --out/profiles; compare two with
                               tools/bench/heap-summary.ts)
  --sqlite-synchronous normal  embedded, experiment: the stores' PRAGMA synchronous (Parley: full)
  --mesh-log FILE              embedded: append the mesh's log to FILE (PARLEY_LOG_LEVEL, default warn)
  --quick                      tiny sizes, seconds (CI smoke)
  --out DIR                    where results go (default bench/results)
  --tag NAME                   added to the result file names
`;

const list = (value: string | undefined): number[] | undefined =>
  value === undefined ? undefined : value.split(",").map((v) => positive(v.trim(), "list item"));

function positive(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: expected a positive number, got ${value}`);
  return n;
}

export function parseBenchOptions(argv: readonly string[]): BenchOptions {
  const { values, positionals } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: {
      profile: { type: "string" },
      "edge-url": { type: "string", multiple: true },
      "push-address": { type: "string" },
      "data-dir": { type: "string" },
      pid: { type: "string", multiple: true },
      targets: { type: "string" },
      quick: { type: "boolean" },
      devices: { type: "string" },
      rates: { type: "string" },
      rate: { type: "string" },
      "step-duration": { type: "string" },
      settle: { type: "string" },
      duration: { type: "string" },
      levels: { type: "string" },
      "streams-per-connection": { type: "string" },
      connections: { type: "string" },
      "source-addresses": { type: "string" },
      members: { type: "string" },
      "devices-per-member": { type: "string" },
      sends: { type: "string" },
      interval: { type: "string" },
      payload: { type: "string" },
      direction: { type: "string" },
      clients: { type: "string" },
      "heartbeat-ms": { type: "string" },
      "cpu-prof": { type: "boolean" },
      "heap-snapshot": { type: "boolean" },
      "max-old-space-size": { type: "string" },
      "sqlite-synchronous": { type: "string" },
      "mesh-log": { type: "string" },
      out: { type: "string" },
      tag: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const scenario = positionals[0];
  if (values.help === true || scenario === undefined || !SCENARIOS.includes(scenario as Scenario)) {
    throw new UsageError(USAGE);
  }
  const quick = values.quick === true;
  const num = (name: keyof typeof values, fallback: number) => {
    const v = values[name];
    return typeof v === "string" ? positive(v, name) : fallback;
  };
  const profile = values.profile ?? "embedded";
  if (profile !== "embedded" && profile !== "cluster") throw new UsageError("--profile: embedded or cluster");
  const edgeUrls = values["edge-url"] ?? [];
  if (profile === "cluster" && (edgeUrls.length === 0 || values["data-dir"] === undefined)) {
    throw new UsageError("--profile cluster needs --edge-url (one or more) and --data-dir (the token key)");
  }
  const targets = (values.targets ?? TARGETS.join(",")).split(",").map((t) => t.trim());
  for (const t of targets) {
    if (!TARGETS.includes(t as TargetName)) throw new UsageError(`--targets: unknown target ${t}`);
  }
  const pids: Record<string, number> = {};
  for (const entry of values.pid ?? []) {
    const [name, pid] = entry.split("=");
    if (name === undefined || pid === undefined)
      throw new UsageError(`--pid: expected NAME=PID, got ${entry}`);
    pids[name] = positive(pid, "pid");
  }
  const clients = values.clients ?? "sdk";
  if (clients !== "sdk" && clients !== "minimal") throw new UsageError("--clients: sdk or minimal");
  const direction = values.direction ?? "both";
  if (direction !== "both" && direction !== "one") throw new UsageError("--direction: both or one");
  const defaultRates: Record<Scenario, number[]> = {
    s1: quick ? [20, 40] : [50, 100, 150, 200, 300, 500, 1000, 2000, 3000, 5000, 7500, 10_000],
    push: quick
      ? [200, 400]
      : [1000, 2000, 5000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 100_000, 150_000],
    s2: [],
    s3: [],
    s4: [],
    s5: [],
  };
  return {
    scenario: scenario as Scenario,
    profile,
    edgeUrls,
    pushAddress: values["push-address"],
    dataDir: values["data-dir"] === undefined ? undefined : resolve(values["data-dir"]),
    pids,
    targets: TARGETS.filter((t) => targets.includes(t)),
    quick,
    devices: num("devices", quick ? 20 : scenario === "push" ? 1000 : scenario === "s5" ? 500 : 1000),
    rates: list(values.rates) ?? defaultRates[scenario as Scenario],
    rate: values.rate === undefined ? undefined : positive(values.rate, "rate"),
    stepMs: num("step-duration", quick ? 1.5 : 8) * 1000,
    settleMs: num("settle", quick ? 10 : scenario === "s4" ? 180 : 15) * 1000,
    durationMs: num("duration", quick ? 2 : 30) * 1000,
    levels: list(values.levels) ?? (quick ? [50, 100] : [10_000, 50_000, 100_000]),
    streamsPerConnection: num("streams-per-connection", 50),
    connections: num("connections", quick ? 4 : 32),
    sourceAddresses: num("source-addresses", 8),
    members: num("members", quick ? 8 : 1000),
    devicesPerMember: num("devices-per-member", quick ? 2 : 5),
    sends: num("sends", quick ? 3 : 20),
    intervalMs: num("interval", quick ? 300 : 1000),
    payloadBytes: num("payload", 100),
    direction,
    clients,
    heartbeatMs:
      values["heartbeat-ms"] === undefined ? undefined : positive(values["heartbeat-ms"], "heartbeat-ms"),
    cpuProf: values["cpu-prof"] === true,
    heapSnapshot: values["heap-snapshot"] === true,
    maxOldSpaceMb:
      values["max-old-space-size"] === undefined
        ? undefined
        : positive(values["max-old-space-size"], "max-old-space-size"),
    sqliteSynchronous: sqliteSynchronous(values["sqlite-synchronous"]),
    meshLog: values["mesh-log"] === undefined ? undefined : resolve(values["mesh-log"]),
    outDir: resolve(values.out ?? resolve(repoRoot, "bench/results")),
    tag: values.tag ?? "",
  };
}

function sqliteSynchronous(value: string | undefined): "full" | "normal" | undefined {
  if (value === undefined) return undefined;
  if (value !== "full" && value !== "normal") throw new UsageError("--sqlite-synchronous: full or normal");
  return value;
}

export class UsageError extends Error {
  override readonly name = "UsageError";
}
