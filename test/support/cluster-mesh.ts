// The cluster profile for end-to-end tests: one process per service, two delivery workers and two
// edge hosts (tools/cluster), on the real engines, under names of this test file's own (keyspace,
// Pulsar namespace, etcd and Redis prefixes), so test files share the engines without seeing each
// other's data. Selected by PARLEY_TEST_PROFILE=cluster (see vitest.config.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDevIssuer } from "../../edge/auth/dev-issuer.ts";
import { devIssuerKeyPath } from "../../edge/config.ts";
import type { ClusterNames } from "../../lib/cluster-engines.ts";
import { engineTargets, uniqueTestName } from "../../lib/engines.ts";
import type { RunningCluster } from "../../tools/cluster/cluster.ts";
import { clusterLayout, freePorts, startCluster } from "../../tools/cluster/cluster.ts";
import type { TestMesh, TestMeshOptions } from "./mesh-users.ts";
import { createTransportPool } from "./mesh-users.ts";

export const TEST_PROFILE_VARIABLE = "PARLEY_TEST_PROFILE";

export function clusterProfileRequested(): boolean {
  return process.env[TEST_PROFILE_VARIABLE] === "cluster";
}

export interface ClusterTestMeshOptions extends TestMeshOptions {
  /** Settings every process gets, over the mesh's own (e.g. OTEL_TRACES_SAMPLER). */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * Each process writes its spans to a file of its own, `<dataDir>/spans/<process>.jsonl`
   * (PARLEY_TRACE_FILE), so a test can tell which process made each span.
   */
  readonly traceFiles?: boolean;
}

export interface ClusterTestMesh extends TestMesh {
  readonly cluster: RunningCluster;
  /**
   * The span file of each process by its name (`sender`, `edge-1`...), empty unless `traceFiles`.
   * They are complete once `cluster.stop()` resolved (each process flushes on SIGTERM) and are
   * removed with the data folder by `stop()`.
   */
  readonly traceFiles: Readonly<Record<string, string>>;
}

const ms = (value: number) => `${value}ms`;

/** Pulsar tenant of every test cluster; each cluster gets a namespace of its own in it. */
export const TEST_PULSAR_TENANT = "parley-test";

/**
 * A test cluster's deployment names, all from one unique name: its own keyspace, Pulsar
 * namespace and etcd and Redis prefixes, so test files share the engines without seeing each
 * other's data.
 */
export function testClusterNames(name: string): ClusterNames {
  return {
    cassandraKeyspace: name,
    pulsarTenant: TEST_PULSAR_TENANT,
    pulsarNamespace: name,
    etcdPrefix: `/${name}/`,
    redisPrefix: `${name}:`,
  };
}

export async function startClusterTestMesh(options: ClusterTestMeshOptions = {}): Promise<ClusterTestMesh> {
  const engines = engineTargets();
  if (!engines) {
    throw new Error(
      `${TEST_PROFILE_VARIABLE}=cluster needs the engines: PARLEY_ENGINES=1 and their addresses`,
    );
  }
  const dataDir = mkdtempSync(join(tmpdir(), "parley-cluster-mesh-"));
  try {
    // Made before the edges start, so both read one key instead of racing to create it.
    await openDevIssuer(devIssuerKeyPath(dataDir));
    const name = uniqueTestName("e2e");
    const edge = options.edge ?? {};
    const planned = clusterLayout({
      engines,
      names: testClusterNames(name),
      dataDir,
      ports: await freePorts(12),
      logLevel: "warn",
      env: {
        ...(edge.heartbeatIntervalMs === undefined
          ? {}
          : { PARLEY_EDGE_HEARTBEAT_INTERVAL: ms(edge.heartbeatIntervalMs) }),
        ...(edge.streamQueueLimit === undefined
          ? {}
          : { PARLEY_EDGE_STREAM_QUEUE_LIMIT: String(edge.streamQueueLimit) }),
        ...(edge.drainTimeoutMs === undefined ? {} : { PARLEY_EDGE_DRAIN_TIMEOUT: ms(edge.drainTimeoutMs) }),
        ...(edge.leaseTtlMs === undefined ? {} : { PARLEY_EDGE_LEASE_TTL: ms(edge.leaseTtlMs) }),
        ...options.env,
      },
    });
    const traceFiles: Record<string, string> = {};
    if (options.traceFiles === true) {
      for (const spec of planned.processes)
        traceFiles[spec.name] = join(dataDir, "spans", `${spec.name}.jsonl`);
    }
    const layout = {
      ...planned,
      processes: planned.processes.map((spec) => {
        const traceFile = traceFiles[spec.name];
        return traceFile === undefined
          ? spec
          : { ...spec, env: { ...spec.env, PARLEY_TRACE_FILE: traceFile } };
      }),
    };
    const cluster = await startCluster(layout, { logDir: join(dataDir, "logs"), detached: false });
    // Users are spread over both edge hosts, so a message usually crosses hosts on its way.
    const pools = layout.edgeUrls.map((url) => createTransportPool(url, options.connections ?? 4));
    let turn = 0;
    return {
      edgeUrl: layout.edgeUrls[0] ?? "",
      dataDir,
      cluster,
      traceFiles,
      transport: () => {
        const pool = pools[turn++ % pools.length];
        if (!pool) throw new Error("the cluster has no edge");
        return pool.next();
      },
      async stop() {
        try {
          await cluster.stop();
        } finally {
          rmSync(dataDir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}
