/**
 * Where the real engines of the cluster profile listen, read from the environment. Processes and
 * tests read the same variables, which `npm run engines -- up` prints (and `.ci/run` exports).
 *
 * Tests that need an engine call `engineTargets()`: without `PARLEY_ENGINES=1` they skip (and say
 * so); with it, a missing address is an error, so CI can never pass by silently skipping.
 */
import { join } from "node:path";

export interface EngineTargets {
  /** `redis://127.0.0.1:16379` */
  readonly redisUrl: string;
  /** etcd client URLs, e.g. `["http://127.0.0.1:12379"]`. */
  readonly etcdEndpoints: readonly string[];
  /** Cassandra native-protocol `host:port` contact points. */
  readonly cassandraContactPoints: readonly string[];
  /** The local data center name the Cassandra driver's load balancing needs. */
  readonly cassandraDatacenter: string;
  /** Pulsar's web service (admin REST API and the WebSocket API under `/ws/v2`). */
  readonly pulsarWebUrl: string;
}

export const ENGINE_VARIABLES = {
  redisUrl: "PARLEY_REDIS_URL",
  etcdEndpoints: "PARLEY_ETCD_ENDPOINTS",
  cassandraContactPoints: "PARLEY_CASSANDRA_CONTACT_POINTS",
  cassandraDatacenter: "PARLEY_CASSANDRA_DATACENTER",
  pulsarWebUrl: "PARLEY_PULSAR_WEB_URL",
} as const;

/** The switch that makes engine tests run (and a missing engine fail them). */
export const ENGINES_SWITCH = "PARLEY_ENGINES";

export function enginesRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[ENGINES_SWITCH] === "1";
}

/**
 * The engine addresses from the environment, or undefined when the engines switch is off.
 * With the switch on, every variable must be set: the error names the missing ones.
 */
export function engineTargets(env: NodeJS.ProcessEnv = process.env): EngineTargets | undefined {
  if (!enginesRequested(env)) return undefined;
  const missing = Object.values(ENGINE_VARIABLES).filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new Error(
      `${ENGINES_SWITCH}=1 but ${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} not set: run \`npm run engines -- up\` and export what it prints`,
    );
  }
  const list = (name: string) =>
    String(env[name])
      .split(",")
      .map((part) => part.trim())
      .filter((part) => part !== "");
  return {
    redisUrl: String(env[ENGINE_VARIABLES.redisUrl]),
    etcdEndpoints: list(ENGINE_VARIABLES.etcdEndpoints),
    cassandraContactPoints: list(ENGINE_VARIABLES.cassandraContactPoints),
    cassandraDatacenter: String(env[ENGINE_VARIABLES.cassandraDatacenter]),
    pulsarWebUrl: String(env[ENGINE_VARIABLES.pulsarWebUrl]).replace(/\/+$/, ""),
  };
}

/** The default state folder of `npm run engines` (data, logs, PIDs and the env file). */
export function defaultEnginesStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PARLEY_ENGINES_DIR ?? join(env.TMPDIR ?? "/tmp", "parley-engines");
}

/** A name unique to one test run, for keyspaces, namespaces and key prefixes on shared engines. */
export function uniqueTestName(prefix: string): string {
  const suffix = `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;
  return `${prefix}_${suffix}`.toLowerCase().replace(/[^a-z0-9_]/g, "_");
}
