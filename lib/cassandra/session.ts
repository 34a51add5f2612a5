/**
 * Opening Cassandra for a service: one driver client per process, bound to the service's keyspace,
 * which is created on first use. Services own their tables (each applies its own migrations, see
 * migrations.ts) and may share a keyspace or use one each.
 */
import cassandra from "cassandra-driver";
import type { Logger } from "../logging.ts";

export type CassandraClient = cassandra.Client;
export const { consistencies } = cassandra.types;

export interface CassandraOptions {
  /** `host:port` native-protocol contact points. */
  readonly contactPoints: readonly string[];
  /** The data center this process is in: the driver only routes queries to its nodes. */
  readonly localDataCenter: string;
  readonly keyspace: string;
  /**
   * Replicas per data center for a keyspace created here (NetworkTopologyStrategy). 1 on a
   * single-node development cluster; 3 in production, where QUORUM then survives one node down.
   */
  readonly replicationFactor?: number;
  readonly logger: Logger;
}

const KEYSPACE_NAME = /^[a-z][a-z0-9_]{0,47}$/;

/**
 * Connects, creates the keyspace if it is missing and returns a client bound to it. Queries default
 * to LOCAL_QUORUM (reads see every acknowledged write of the data center; a single-node cluster
 * has a quorum of one) and prepared statements; callers pick other levels per query where the
 * trade-off differs, and document why next to the query.
 */
export async function openCassandra(options: CassandraOptions): Promise<CassandraClient> {
  if (!KEYSPACE_NAME.test(options.keyspace)) {
    throw new Error(
      `invalid Cassandra keyspace name "${options.keyspace}": lower-case letters, digits and _, at most 48`,
    );
  }
  const replicationFactor = options.replicationFactor ?? 1;
  const base = {
    contactPoints: [...options.contactPoints],
    localDataCenter: options.localDataCenter,
    queryOptions: {
      consistency: consistencies.localQuorum,
      serialConsistency: consistencies.localSerial,
      prepare: true,
    },
    socketOptions: { connectTimeout: 5_000, readTimeout: 12_000 },
  };
  const bootstrap = new cassandra.Client(base);
  try {
    await bootstrap.connect();
    await bootstrap.execute(
      `CREATE KEYSPACE IF NOT EXISTS ${options.keyspace} WITH replication = {'class': 'NetworkTopologyStrategy', '${options.localDataCenter}': ${replicationFactor}}`,
      [],
      { prepare: false },
    );
  } catch (err) {
    throw new Error(
      `cannot reach Cassandra at ${options.contactPoints.join(", ")} (data center ${options.localDataCenter}): ${(err as Error).message}`,
      { cause: err },
    );
  } finally {
    await bootstrap.shutdown();
  }
  const client = new cassandra.Client({ ...base, keyspace: options.keyspace });
  await client.connect();
  client.on("log", (level: string, className: string, message: string) => {
    if (level === "error" || level === "warning") {
      options.logger[level === "error" ? "error" : "warn"]({ component: className }, message);
    }
  });
  return client;
}

/** Whether a lightweight transaction's result says it was applied (`[applied]` column). */
export function wasApplied(result: cassandra.types.ResultSet): boolean {
  return result.wasApplied();
}
