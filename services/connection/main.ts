// The connection service alone in its own process: `node services/connection/main.ts`.
// PARLEY_PROFILE=cluster runs it on Cassandra (contacts, groups) and Pulsar (events), with the
// connection request rate limit in Redis (shared by every connection process); the default,
// embedded, on the SQLite file and the embedded broker's file in PARLEY_DATA_DIR, with the rate
// limit in memory.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import {
  closeRedisClient,
  loadProfile,
  openClusterBroker,
  openClusterCassandra,
  openClusterRedis,
} from "../../lib/cluster-engines.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createCassandraConnectionStore } from "./adapters/cassandra/cassandra-connection-store.ts";
import type { ConnectionServiceOptions } from "./service.ts";
import { CONNECTION_DEFAULT_PORT, createConnectionService, DEFAULT_REQUEST_LIMIT } from "./service.ts";

await runProcess("connection", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("CONNECTION", CONNECTION_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    // Where the key service answers GetIdentityKeys (devices shown with ACCEPTED connections).
    keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let store: ConnectionServiceOptions["store"];
  let limiters: Pick<ConnectionServiceOptions, "requestLimiter"> = {};
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-connection");
    const prefix = profile.engines.names.redisPrefix;
    const cassandra = await openClusterCassandra(profile.engines, logger);
    broker = await openClusterBroker(profile.engines, logger);
    store = await createCassandraConnectionStore({ client: cassandra, logger });
    limiters = {
      requestLimiter: createRedisRateLimiter(redis, DEFAULT_REQUEST_LIMIT, {
        keyPrefix: `${prefix}connection:rate:connection_request:`,
      }),
    };
    closeEngines = async () => {
      await cassandra.shutdown();
      await closeRedisClient(redis);
    };
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
    store = { path: join(config.dataDir, "parley.db") };
  }
  const connection = createConnectionService({
    store,
    broker,
    logger,
    devices: { keyAddress: config.keyAddress },
    ...limiters,
  });
  const server = await startGrpcService({
    name: "connection",
    host: config.host,
    port: config.port,
    services: connection.registrations,
    logger,
  });
  // Stopped in reverse: the server first (drains calls), then the relay and store, then the engines.
  return [
    {
      name: "connection-parts",
      address: "",
      stop: async () => {
        await connection.stop();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});
