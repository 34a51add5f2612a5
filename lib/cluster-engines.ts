/**
 * The cluster profile's engine clients, opened the same way by every process's main (and by the
 * in-process engine mesh of the tests): where each engine listens comes from lib/engines.ts, and
 * the names that keep one deployment's data apart from another's on shared engines (keyspace,
 * Pulsar tenant/namespace, etcd and Redis key prefixes) from the variables below.
 */
import type { Broker } from "./broker/broker.ts";
import { Topics } from "./broker/broker.ts";
import { ensurePulsarNamespace } from "./broker/pulsar/namespace.ts";
import { createPulsarBroker } from "./broker/pulsar/pulsar-broker.ts";
import type { CassandraClient } from "./cassandra/session.ts";
import { openCassandra } from "./cassandra/session.ts";
import type { ConfigSpec } from "./config.ts";
import { enumVar, loadConfig, stringVar } from "./config.ts";
import type { EngineTargets } from "./engines.ts";
import { ENGINE_VARIABLES } from "./engines.ts";
import type { Logger } from "./logging.ts";
import type { Redis } from "./redis/redis-client.ts";
import { closeRedisClient, createRedisClient } from "./redis/redis-client.ts";
import { createEtcdRegistry } from "./registry/etcd/etcd-registry.ts";
import type { Registry } from "./registry/registry.ts";

export type Profile = "embedded" | "cluster";

/** Names that keep one deployment's data apart from another's on shared engines. */
export interface ClusterNames {
  readonly cassandraKeyspace: string;
  readonly pulsarTenant: string;
  readonly pulsarNamespace: string;
  readonly etcdPrefix: string;
  readonly redisPrefix: string;
}

export const DEFAULT_CLUSTER_NAMES: ClusterNames = {
  cassandraKeyspace: "parley",
  pulsarTenant: "parley",
  pulsarNamespace: "chat",
  etcdPrefix: "/parley/",
  redisPrefix: "parley:",
};

export const CLUSTER_NAME_VARIABLES = {
  cassandraKeyspace: "PARLEY_CASSANDRA_KEYSPACE",
  pulsarTenant: "PARLEY_PULSAR_TENANT",
  pulsarNamespace: "PARLEY_PULSAR_NAMESPACE",
  etcdPrefix: "PARLEY_ETCD_PREFIX",
  redisPrefix: "PARLEY_REDIS_PREFIX",
} as const;

export const PROFILE_VARIABLE = "PARLEY_PROFILE";

export interface ClusterEngineConfig {
  readonly targets: EngineTargets;
  readonly names: ClusterNames;
}

const profileSpec = {
  profile: enumVar(PROFILE_VARIABLE, ["embedded", "cluster"] as const, { default: "embedded" }),
} satisfies ConfigSpec;

const clusterSpec = {
  redisUrl: stringVar(ENGINE_VARIABLES.redisUrl),
  etcdEndpoints: stringVar(ENGINE_VARIABLES.etcdEndpoints),
  cassandraContactPoints: stringVar(ENGINE_VARIABLES.cassandraContactPoints),
  cassandraDatacenter: stringVar(ENGINE_VARIABLES.cassandraDatacenter, { default: "datacenter1" }),
  pulsarWebUrl: stringVar(ENGINE_VARIABLES.pulsarWebUrl),
  cassandraKeyspace: stringVar(CLUSTER_NAME_VARIABLES.cassandraKeyspace, {
    default: DEFAULT_CLUSTER_NAMES.cassandraKeyspace,
  }),
  pulsarTenant: stringVar(CLUSTER_NAME_VARIABLES.pulsarTenant, {
    default: DEFAULT_CLUSTER_NAMES.pulsarTenant,
  }),
  pulsarNamespace: stringVar(CLUSTER_NAME_VARIABLES.pulsarNamespace, {
    default: DEFAULT_CLUSTER_NAMES.pulsarNamespace,
  }),
  etcdPrefix: stringVar(CLUSTER_NAME_VARIABLES.etcdPrefix, { default: DEFAULT_CLUSTER_NAMES.etcdPrefix }),
  redisPrefix: stringVar(CLUSTER_NAME_VARIABLES.redisPrefix, { default: DEFAULT_CLUSTER_NAMES.redisPrefix }),
} satisfies ConfigSpec;

/**
 * Which profile this process runs (PARLEY_PROFILE, default embedded) and, for the cluster, where
 * the engines are: every engine address is then required, and a missing one stops the process at
 * start-up with the variable named (exit 78, like any configuration error).
 */
export function loadProfile(
  env: NodeJS.ProcessEnv = process.env,
): { readonly profile: "embedded" } | { readonly profile: "cluster"; readonly engines: ClusterEngineConfig } {
  const { profile } = loadConfig(profileSpec, env);
  if (profile === "embedded") return { profile };
  const config = loadConfig(clusterSpec, env);
  const list = (value: string) =>
    value
      .split(",")
      .map((part) => part.trim())
      .filter((part) => part !== "");
  return {
    profile,
    engines: {
      targets: {
        redisUrl: config.redisUrl,
        etcdEndpoints: list(config.etcdEndpoints),
        cassandraContactPoints: list(config.cassandraContactPoints),
        cassandraDatacenter: config.cassandraDatacenter,
        pulsarWebUrl: config.pulsarWebUrl.replace(/\/+$/, ""),
      },
      names: {
        cassandraKeyspace: config.cassandraKeyspace,
        pulsarTenant: config.pulsarTenant,
        pulsarNamespace: config.pulsarNamespace,
        etcdPrefix: config.etcdPrefix,
        redisPrefix: config.redisPrefix,
      },
    },
  };
}

/** The Pulsar broker, after making sure the namespace exists with Parley's policies (idempotent). */
export async function openClusterBroker(config: ClusterEngineConfig, logger: Logger): Promise<Broker> {
  await ensurePulsarNamespace({
    webUrl: config.targets.pulsarWebUrl,
    tenant: config.names.pulsarTenant,
    namespace: config.names.pulsarNamespace,
    compactedTopics: [Topics.memberships, Topics.blocks],
  });
  return createPulsarBroker({
    webUrl: config.targets.pulsarWebUrl,
    tenant: config.names.pulsarTenant,
    namespace: config.names.pulsarNamespace,
    logger: logger.child({ component: "pulsar" }),
  });
}

export function openClusterCassandra(config: ClusterEngineConfig, logger: Logger): Promise<CassandraClient> {
  return openCassandra({
    contactPoints: config.targets.cassandraContactPoints,
    localDataCenter: config.targets.cassandraDatacenter,
    keyspace: config.names.cassandraKeyspace,
    logger: logger.child({ component: "cassandra" }),
  });
}

export function openClusterRedis(config: ClusterEngineConfig, logger: Logger, connectionName: string): Redis {
  return createRedisClient(config.targets.redisUrl, logger, { connectionName });
}

export { closeRedisClient };

export function openClusterRegistry(config: ClusterEngineConfig, logger: Logger): Registry {
  return createEtcdRegistry({
    endpoints: config.targets.etcdEndpoints,
    keyPrefix: config.names.etcdPrefix,
    logger: logger.child({ component: "etcd" }),
  });
}
