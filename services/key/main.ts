// The key service alone in its own process: `node services/key/main.ts`. PARLEY_PROFILE=cluster
// runs it on Cassandra (keys) and Pulsar (events), with the prekey claim rate limits in Redis
// (shared by every key process); the default, embedded, on the SQLite file and the embedded
// broker's file in PARLEY_DATA_DIR, with the rate limits in memory.
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
import { createCassandraKeyStore } from "./adapters/cassandra/cassandra-key-store.ts";
import type { KeyServiceOptions } from "./service.ts";
import { createKeyService, DEFAULT_CLAIM_RATES, KEY_DEFAULT_PORT } from "./service.ts";

await runProcess("key", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("KEY", KEY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let store: KeyServiceOptions["store"];
  let limiters: Pick<KeyServiceOptions, "claimLimiters"> = {};
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-key");
    const prefix = profile.engines.names.redisPrefix;
    const cassandra = await openClusterCassandra(profile.engines, logger);
    broker = await openClusterBroker(profile.engines, logger);
    store = await createCassandraKeyStore({ client: cassandra, logger });
    // A prefix per limiter (named like its rejection metric): their buckets must never mix.
    limiters = {
      claimLimiters: {
        perTarget: createRedisRateLimiter(redis, DEFAULT_CLAIM_RATES.perTarget, {
          keyPrefix: `${prefix}key:rate:prekey_claim_per_target:`,
        }),
        perCaller: createRedisRateLimiter(redis, DEFAULT_CLAIM_RATES.perCaller, {
          keyPrefix: `${prefix}key:rate:prekey_claim_per_caller:`,
        }),
      },
    };
    closeEngines = async () => {
      await cassandra.shutdown();
      await closeRedisClient(redis);
    };
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
    store = { path: join(config.dataDir, "parley.db") };
  }
  const key = await createKeyService({ store, broker, logger, ...limiters });
  const server = await startGrpcService({
    name: "key",
    host: config.host,
    port: config.port,
    services: key.registrations,
    logger,
  });
  // Stopped in reverse: the server first (drains calls), then the relay and store, then the engines.
  return [
    {
      name: "key-parts",
      address: "",
      stop: async () => {
        await key.stop();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});
