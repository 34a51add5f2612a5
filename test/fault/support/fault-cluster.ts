// The cluster profile for one fault test file: one process per service, two delivery workers, two
// edge hosts (tools/cluster), on the shared engines under names of its own, or on private engines
// for the parts a scenario restarts. In front of the edges, a TCP "front door" (a load balancer the
// test controls) is the one URL devices are configured with; they Locate their edge through it.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Transport } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import cassandra from "cassandra-driver";
import { openDevIssuer } from "../../../edge/auth/dev-issuer.ts";
import { devIssuerKeyPath } from "../../../edge/config.ts";
import { createPulsarAdmin } from "../../../lib/broker/pulsar/admin.ts";
import type { EngineTargets } from "../../../lib/engines.ts";
import { engineTargets, uniqueTestName } from "../../../lib/engines.ts";
import type { ClusterProcessSpec, RunningCluster } from "../../../tools/cluster/cluster.ts";
import {
  clusterLayout,
  freePorts,
  startCluster,
  startClusterProcess,
} from "../../../tools/cluster/cluster.ts";
import { TEST_PULSAR_TENANT, testClusterNames } from "../../support/cluster-mesh.ts";
import type { MeshTarget } from "../../support/mesh-users.ts";
import type { TcpRelay } from "./tcp-relay.ts";
import { startTcpRelay, targetOf } from "./tcp-relay.ts";

export interface FaultClusterOptions {
  /** Engine addresses over the shared ones (e.g. a private Redis the scenario restarts). */
  readonly engines?: Partial<EngineTargets>;
  /** Settings every process gets. */
  readonly env?: Readonly<Record<string, string>>;
  /** Edge heartbeat interval (ServerReady; idle streams close after 3). Default 5 s. */
  readonly heartbeatIntervalMs?: number;
  /**
   * Edge registry lease: how long a killed edge's routes outlive it. Default 10 s (the edge's
   * own): shorter leases expire on a loaded machine, and their edges close every stream.
   */
  readonly leaseTtlMs?: number;
  /** HTTP/2 connections per edge URL shared by the devices' clients. Default 4. */
  readonly connectionsPerUrl?: number;
  /** Services whose fault hook (PARLEY_<SERVICE>_FAULT_KILL_FILE) `arm` can fire. */
  readonly hooks?: readonly HookedService[];
}

export type HookedService = "sender" | "history" | "delivery";

export interface FaultCluster extends MeshTarget {
  readonly cluster: RunningCluster;
  /** The load balancer in front of the edges: the base URL every device's client is given. */
  readonly frontDoor: TcpRelay;
  readonly edgeUrls: readonly string[];
  readonly logDir: string;
  /** A pooled transport to `url` (an edge, or the front door), shared by many devices. */
  transportFor(url: string): Transport;
  /** SIGKILL, and wait until the process is gone. */
  kill(name: string): Promise<void>;
  /**
   * SIGTERM (an edge drains its streams first) sent before this returns, like `killNow`; the promise
   * resolves once the process is gone (SIGKILL after 60 s).
   */
  terminateNow(name: string): Promise<void>;
  /**
   * SIGKILL sent before this returns (from inside an event handler, before anything else can run);
   * the promise resolves once the process is gone.
   */
  killNow(name: string): Promise<void>;
  /** Resolves when the process exits by itself (a fault hook that killed it). */
  exited(name: string): Promise<void>;
  /**
   * Arms a service's fault hook: its next publish (sender), stored message (history) or pushed
   * message batch (delivery, whichever worker gets there first) SIGKILLs the process.
   */
  arm(service: HookedService): void;
  /** Whether an armed hook has not fired yet. */
  armed(service: HookedService): boolean;
  /** Disarms a hook that did not fire. */
  disarm(service: HookedService): void;
  /**
   * Starts the process again on its ports, with `env` over its own settings (a value of
   * undefined removes a setting): arms or disarms a fault hook, or switches a control on.
   */
  restart(name: string, env?: Readonly<Record<string, string | undefined>>): Promise<void>;
  stop(): Promise<void>;
}

/** Data folders (and logs) are removed on stop unless this is set: look at a failed run's logs. */
export const KEEP_VARIABLE = "PARLEY_FAULT_KEEP";

export async function startFaultCluster(options: FaultClusterOptions = {}): Promise<FaultCluster> {
  const shared = engineTargets();
  if (shared === undefined) {
    throw new Error("fault tests need the engines: PARLEY_ENGINES=1 and their addresses");
  }
  const engines: EngineTargets = { ...shared, ...options.engines };
  const dataDir = mkdtempSync(join(tmpdir(), "parley-fault-"));
  const relays: TcpRelay[] = [];
  try {
    await openDevIssuer(devIssuerKeyPath(dataDir));
    const name = uniqueTestName("fault");
    const planned = clusterLayout({
      engines,
      names: testClusterNames(name),
      dataDir,
      ports: await freePorts(12),
      logLevel: "warn",
      env: {
        PARLEY_EDGE_HEARTBEAT_INTERVAL: `${options.heartbeatIntervalMs ?? 5_000}ms`,
        PARLEY_EDGE_LEASE_TTL: `${options.leaseTtlMs ?? 10_000}ms`,
        PARLEY_EDGE_DRAIN_TIMEOUT: "2s",
        ...options.env,
      },
    });
    const killFile = (service: HookedService) => join(dataDir, `${service}.kill`);
    const hooked = new Set(options.hooks ?? []);
    const hookOf = (processName: string) =>
      [...hooked].find((service) => processName === service || processName.startsWith(`${service}-`));
    const logDir = join(dataDir, "logs");
    const layout = {
      ...planned,
      processes: planned.processes.map((spec) => {
        const service = hookOf(spec.name);
        return service === undefined
          ? spec
          : {
              ...spec,
              env: { ...spec.env, [`PARLEY_${service.toUpperCase()}_FAULT_KILL_FILE`]: killFile(service) },
            };
      }),
    };
    const cluster = await startCluster(layout, { logDir, detached: false });
    const frontDoor = await startTcpRelay(() => layout.edgeUrls.map(targetOf));
    relays.push(frontDoor);
    const pools = new Map<string, { transports: Transport[]; next: number }>();
    const transportFor = (url: string): Transport => {
      let pool = pools.get(url);
      if (pool === undefined) {
        pool = {
          transports: Array.from({ length: options.connectionsPerUrl ?? 4 }, () =>
            createGrpcTransport({ baseUrl: url }),
          ),
          next: 0,
        };
        pools.set(url, pool);
      }
      return pool.transports[pool.next++ % pool.transports.length] as Transport;
    };
    let turn = 0;
    const spec = (processName: string): ClusterProcessSpec => {
      const found = layout.processes.find((p) => p.name === processName);
      if (found === undefined) throw new Error(`no process ${processName} in this cluster`);
      return found;
    };
    const running = (processName: string) => {
      const process = cluster.running.get(processName);
      if (process === undefined) throw new Error(`${processName} is not running`);
      return process;
    };
    return {
      edgeUrl: layout.edgeUrls[0] ?? "",
      edgeUrls: layout.edgeUrls,
      dataDir,
      logDir,
      cluster,
      frontDoor,
      transportFor,
      // Set-up calls (profiles, keys, contacts) go straight to the edges, spread over both, and
      // ride out a busy machine's UNAVAILABLE answers.
      transport: () => retryingUnary(transportFor(layout.edgeUrls[turn++ % layout.edgeUrls.length] ?? "")),
      async kill(processName) {
        await running(processName).stop({ signal: "SIGKILL" });
      },
      terminateNow(processName) {
        const victim = running(processName);
        // Once: a process that is shutting down takes a second SIGTERM as "die now".
        process.kill(victim.pid, "SIGTERM");
        const force = setTimeout(() => process.kill(victim.pid, "SIGKILL"), 60_000);
        return victim.exited.finally(() => clearTimeout(force));
      },
      killNow(processName) {
        const victim = running(processName);
        process.kill(victim.pid, "SIGKILL");
        return victim.exited;
      },
      exited: (processName) => running(processName).exited,
      arm(service) {
        if (!hooked.has(service)) throw new Error(`the cluster was started without the ${service} hook`);
        writeFileSync(killFile(service), "armed by a fault test\n");
      },
      armed: (service) => existsSync(killFile(service)),
      disarm(service) {
        rmSync(killFile(service), { force: true });
      },
      async restart(processName, env = {}) {
        await cluster.running.get(processName)?.stop({ signal: "SIGKILL" });
        const base = spec(processName);
        const merged: Record<string, string> = { ...base.env };
        for (const [key, value] of Object.entries(env)) {
          if (value === undefined) delete merged[key];
          else merged[key] = value;
        }
        const started = await startClusterProcess({ ...base, env: merged }, { logDir, detached: false });
        cluster.running.set(processName, started);
      },
      async stop() {
        try {
          for (const relay of relays) await relay.close();
          await cluster.stop();
          // A fault run leaves thousands of inbox partitions and tombstones: give the shared
          // engines their memory back (only this cluster's own keyspace and namespace).
          await dropOwnData(engines, name);
        } finally {
          if (process.env[KEEP_VARIABLE] === "1") console.info(`fault cluster data kept in ${dataDir}`);
          else rmSync(dataDir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    for (const relay of relays) await relay.close();
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Unary calls answered UNAVAILABLE (the edge could not reach a service in time on a loaded machine)
 * are sent again, up to 6 times with a growing pause: set-up must not fail a fault run before the
 * fault. Only for set-up calls the edge refuses before anything is changed, or that are idempotent.
 */
function retryingUnary(inner: Transport): Transport {
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      for (let attempt = 1; ; attempt++) {
        try {
          return await inner.unary(method, signal, timeoutMs, header, input, contextValues);
        } catch (err) {
          if (attempt >= 6 || !(err instanceof ConnectError) || err.code !== Code.Unavailable) throw err;
          await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
        }
      }
    },
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      inner.stream(method, signal, timeoutMs, header, input, contextValues),
  };
}

/** Drops this cluster's keyspace and Pulsar namespace; a failure is logged, never thrown (cleanup). */
async function dropOwnData(engines: EngineTargets, name: string): Promise<void> {
  const client = new cassandra.Client({
    contactPoints: [...engines.cassandraContactPoints],
    localDataCenter: engines.cassandraDatacenter,
    socketOptions: { readTimeout: 120_000 },
  });
  try {
    await client.connect();
    await client.execute(`DROP KEYSPACE IF EXISTS ${name}`);
  } catch (err) {
    console.warn(`fault cluster: could not drop keyspace ${name}: ${String(err)}`);
  } finally {
    await client.shutdown().catch(() => {});
  }
  // Pulsar refuses a forced namespace delete unless the broker allows it: topics go first.
  const admin = createPulsarAdmin({ webUrl: engines.pulsarWebUrl, timeoutMs: 60_000 });
  const namespace = `${TEST_PULSAR_TENANT}/${name}`;
  try {
    const topics = await admin.listTopics(namespace);
    await Promise.all(
      topics
        .filter((topic) => topic.startsWith("persistent://"))
        .map((topic) => admin.deleteTopic(topic.slice("persistent://".length))),
    );
    await admin.deleteNamespace(namespace);
  } catch (err) {
    console.warn(`fault cluster: could not delete Pulsar namespace ${namespace}: ${String(err)}`);
  }
}
