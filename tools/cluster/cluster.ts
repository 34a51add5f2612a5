// The cluster profile as processes: one per service, two delivery workers and two edge hosts by
// default, each on its own port, on the real engines, all logging to one folder. Used by
// `npm run cluster` (detached, with PID files) and by tests (attached: they die with the test).
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { join, resolve } from "node:path";
import type { ClusterNames } from "../../lib/cluster-engines.ts";
import { CLUSTER_NAME_VARIABLES, PROFILE_VARIABLE } from "../../lib/cluster-engines.ts";
import type { EngineTargets } from "../../lib/engines.ts";
import { ENGINE_VARIABLES, ENGINES_SWITCH } from "../../lib/engines.ts";

export const repoRoot = resolve(import.meta.dirname, "../..");

export type ServiceName = "key" | "connection" | "sender" | "history" | "delivery";

export interface ClusterProcessSpec {
  /** Unique in the cluster: `key`, `delivery-2`, `edge-1`… */
  readonly name: string;
  readonly script: string;
  readonly env: Readonly<Record<string, string>>;
  /** The gRPC (services) or HTTP (edge) port it listens on. */
  readonly port: number;
  readonly kind: "service" | "edge";
}

export interface ClusterLayout {
  readonly processes: readonly ClusterProcessSpec[];
  readonly edgeUrls: readonly string[];
  /** host:port of each service's gRPC server (the first delivery worker for `delivery`). */
  readonly internal: Readonly<Record<ServiceName, string>>;
}

export interface ClusterLayoutOptions {
  readonly engines: EngineTargets;
  readonly names: ClusterNames;
  /** Where the dev issuer's key lives (tokens for tests and the demo are signed with it). */
  readonly dataDir: string;
  readonly edges?: number;
  readonly deliveryWorkers?: number;
  /** Ports to use, in order; `freePorts()` finds some. */
  readonly ports: readonly number[];
  readonly logLevel?: string;
  /** Settings every process gets (e.g. OTEL_*, PARLEY_EDGE_HEARTBEAT_INTERVAL). */
  readonly env?: Readonly<Record<string, string>>;
}

/** Every process of a cluster with its environment: what `startCluster` runs. */
export function clusterLayout(options: ClusterLayoutOptions): ClusterLayout {
  const edges = options.edges ?? 2;
  const deliveryWorkers = options.deliveryWorkers ?? 2;
  const ports = [...options.ports];
  const take = () => {
    const port = ports.shift();
    if (port === undefined) throw new Error("clusterLayout: not enough ports");
    return port;
  };
  const common: Record<string, string> = {
    [PROFILE_VARIABLE]: "cluster",
    [ENGINES_SWITCH]: "1",
    [ENGINE_VARIABLES.redisUrl]: options.engines.redisUrl,
    [ENGINE_VARIABLES.etcdEndpoints]: options.engines.etcdEndpoints.join(","),
    [ENGINE_VARIABLES.cassandraContactPoints]: options.engines.cassandraContactPoints.join(","),
    [ENGINE_VARIABLES.cassandraDatacenter]: options.engines.cassandraDatacenter,
    [ENGINE_VARIABLES.pulsarWebUrl]: options.engines.pulsarWebUrl,
    [CLUSTER_NAME_VARIABLES.cassandraKeyspace]: options.names.cassandraKeyspace,
    [CLUSTER_NAME_VARIABLES.pulsarTenant]: options.names.pulsarTenant,
    [CLUSTER_NAME_VARIABLES.pulsarNamespace]: options.names.pulsarNamespace,
    [CLUSTER_NAME_VARIABLES.etcdPrefix]: options.names.etcdPrefix,
    [CLUSTER_NAME_VARIABLES.redisPrefix]: options.names.redisPrefix,
    PARLEY_LOG_LEVEL: options.logLevel ?? "info",
    PARLEY_METRICS_PORT: "0",
    ...options.env,
  };
  const processes: ClusterProcessSpec[] = [];
  const address = (port: number) => `127.0.0.1:${port}`;
  const service = (name: string, prefix: string, script: string, env: Record<string, string> = {}) => {
    const port = take();
    processes.push({
      name,
      script,
      port,
      kind: "service",
      env: {
        ...common,
        [`PARLEY_${prefix}_HOST`]: "127.0.0.1",
        [`PARLEY_${prefix}_PORT`]: String(port),
        ...env,
      },
    });
    return address(port);
  };
  const key = service("key", "KEY", "services/key/main.ts");
  const connection = service("connection", "CONNECTION", "services/connection/main.ts", {
    PARLEY_KEY_ADDRESS: key,
  });
  const sender = service("sender", "SENDER", "services/sender/main.ts", {
    PARLEY_KEY_ADDRESS: key,
    PARLEY_CONNECTION_ADDRESS: connection,
  });
  const history = service("history", "HISTORY", "services/history/main.ts", {
    PARLEY_CONNECTION_ADDRESS: connection,
  });
  const deliveries: string[] = [];
  for (let i = 1; i <= deliveryWorkers; i++) {
    deliveries.push(service(`delivery-${i}`, "DELIVERY", "services/delivery/main.ts"));
  }
  const edgeUrls: string[] = [];
  for (let i = 1; i <= edges; i++) {
    const port = take();
    const pushPort = take();
    const url = `http://127.0.0.1:${port}`;
    edgeUrls.push(url);
    processes.push({
      name: `edge-${i}`,
      script: "edge/main.ts",
      port,
      kind: "edge",
      env: {
        ...common,
        PARLEY_EDGE_HOST: "127.0.0.1",
        PARLEY_EDGE_PORT: String(port),
        PARLEY_EDGE_PUBLIC_URL: url,
        PARLEY_EDGE_HOST_ID: `edge-${i}`,
        PARLEY_EDGE_PUSH_HOST: "127.0.0.1",
        PARLEY_EDGE_PUSH_PORT: String(pushPort),
        PARLEY_CONNECTION_ADDRESS: connection,
        PARLEY_KEY_ADDRESS: key,
        PARLEY_SENDER_ADDRESS: sender,
        PARLEY_HISTORY_ADDRESS: history,
        // Each edge has a delivery worker of its own for its RPCs (presence, typing); pushes
        // reach any edge from any worker through the registry.
        PARLEY_DELIVERY_ADDRESS: deliveries[(i - 1) % deliveries.length] ?? "",
        PARLEY_EDGE_DEV_ISSUER_KEY_FILE: join(options.dataDir, "dev-issuer.jwk"),
      },
    });
  }
  return {
    processes,
    edgeUrls,
    internal: { key, connection, sender, history, delivery: deliveries[0] ?? "" },
  };
}

/** `count` ports on 127.0.0.1 that were free a moment ago. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<import("node:net").Server>((resolveServer, reject) => {
          const server = createServer();
          server.once("error", reject);
          server.listen({ host: "127.0.0.1", port: 0 }, () => resolveServer(server));
        }),
    ),
  );
  const ports = servers.map((server) => {
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("no port");
    return address.port;
  });
  await Promise.all(servers.map((server) => new Promise((done) => server.close(done))));
  return ports;
}

export interface RunningProcess {
  readonly spec: ClusterProcessSpec;
  readonly pid: number;
  readonly logFile: string;
  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves once it is gone. */
  stop(options?: { readonly signal?: NodeJS.Signals; readonly graceMs?: number }): Promise<void>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
}

/**
 * Starts one process of the cluster, its output appended to `<logDir>/<name>.log`, and resolves
 * once it serves. Attached processes are killed with their parent's process group; detached ones
 * outlive it and are stopped by PID (`npm run cluster -- down`).
 */
export async function startClusterProcess(
  spec: ClusterProcessSpec,
  options: { readonly logDir: string; readonly detached: boolean; readonly timeoutMs?: number },
): Promise<RunningProcess> {
  mkdirSync(options.logDir, { recursive: true });
  const logFile = join(options.logDir, `${spec.name}.log`);
  const offset = existsSync(logFile) ? readFileSync(logFile).length : 0;
  const fd = openSync(logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [spec.script], {
      cwd: repoRoot,
      env: { ...process.env, ...spec.env },
      stdio: ["ignore", fd, fd],
      detached: options.detached,
    });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${spec.name}`);
  if (options.detached) child.unref();
  const exited = new Promise<void>((done) => {
    if (child.exitCode !== null) done();
    child.once("exit", () => done());
  });
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  // Ready when it serves: a service once its gRPC port accepts connections (it listens only after
  // its parts started), an edge once /readyz answers 200. Whatever the log level.
  const ready =
    spec.kind === "edge"
      ? () =>
          fetch(`http://127.0.0.1:${spec.port}/readyz`, { signal: AbortSignal.timeout(1_000) }).then(
            (response) => response.ok,
            () => false,
          )
      : () => tcpOpen(spec.port);
  const timeoutMs = options.timeoutMs ?? 90_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ready()) break;
    const text = () => readFileSync(logFile).subarray(offset).toString("utf8");
    if (gone) {
      throw new Error(`${spec.name} exited while starting; its log (${logFile}):\n${lastLines(text(), 20)}`);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(
        `${spec.name} did not start within ${timeoutMs} ms; its log:\n${lastLines(text(), 20)}`,
      );
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  return {
    spec,
    pid,
    logFile,
    exited,
    async stop(stopOptions = {}) {
      if (gone) return;
      child.kill(stopOptions.signal ?? "SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), stopOptions.graceMs ?? 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface RunningCluster extends ClusterLayout {
  readonly running: Map<string, RunningProcess>;
  readonly logDir: string;
  /** Starts a process of the layout again (after a kill), with the same ports. */
  restart(name: string): Promise<RunningProcess>;
  stop(): Promise<void>;
}

/** Starts every process of `layout` in dependency order (key first, edges last). */
export async function startCluster(
  layout: ClusterLayout,
  options: { readonly logDir: string; readonly detached: boolean; readonly pidDir?: string },
): Promise<RunningCluster> {
  const running = new Map<string, RunningProcess>();
  const start = async (spec: ClusterProcessSpec) => {
    const process = await startClusterProcess(spec, options);
    running.set(spec.name, process);
    if (options.pidDir) {
      mkdirSync(options.pidDir, { recursive: true });
      writeFileSync(join(options.pidDir, `${spec.name}.pid`), `${process.pid}\n`);
    }
    return process;
  };
  const stop = async () => {
    for (const spec of [...layout.processes].reverse()) await running.get(spec.name)?.stop();
  };
  try {
    const [key, ...rest] = layout.processes;
    if (key) await start(key);
    // The rest only need key (and the engines) to start; edges last so their peers serve.
    const services = rest.filter((spec) => spec.kind === "service");
    await Promise.all(services.map(start));
    await Promise.all(rest.filter((spec) => spec.kind === "edge").map(start));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    ...layout,
    running,
    logDir: options.logDir,
    async restart(name) {
      const spec = layout.processes.find((p) => p.name === name);
      if (!spec) throw new Error(`no process ${name} in this cluster`);
      await running.get(name)?.stop();
      return start(spec);
    },
    stop,
  };
}

function lastLines(text: string, count: number): string {
  return text.trimEnd().split("\n").slice(-count).join("\n");
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(1_000);
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("timeout", () => {
      socket.destroy();
      done(false);
    });
    socket.once("error", () => done(false));
  });
}
