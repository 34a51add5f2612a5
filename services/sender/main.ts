// The sender alone in its own process: `node services/sender/main.ts`. PARLEY_PROFILE=cluster runs
// it on Pulsar, with idempotency keys and send rate limits in Redis (shared by every sender
// process); the default, embedded, on the embedded broker's file and the SQLite file in
// PARLEY_DATA_DIR, with rate limits in memory.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import {
  closeRedisClient,
  loadProfile,
  openClusterBroker,
  openClusterRedis,
} from "../../lib/cluster-engines.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createRedisIdempotencyStore } from "./adapters/redis/idempotency-store.ts";
import type { SenderServiceOptions } from "./service.ts";
import { createSenderService, DEFAULT_SEND_RATE, SENDER_DEFAULT_PORT } from "./service.ts";

await runProcess("sender", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("SENDER", SENDER_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let stores: Pick<SenderServiceOptions, "idempotency" | "rateLimiter" | "idempotencyPath">;
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-sender");
    const prefix = profile.engines.names.redisPrefix;
    broker = await openClusterBroker(profile.engines, logger);
    stores = {
      idempotency: createRedisIdempotencyStore(redis, { keyPrefix: `${prefix}sender:idem:` }),
      rateLimiter: createRedisRateLimiter(redis, DEFAULT_SEND_RATE, { keyPrefix: `${prefix}sender:rate:` }),
    };
    closeEngines = () => closeRedisClient(redis);
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
    stores = { idempotencyPath: join(config.dataDir, "parley.db") };
  }
  const sender = await createSenderService({ broker, keyAddress: config.keyAddress, logger, ...stores });
  const server = await startGrpcService({
    name: "sender",
    host: config.host,
    port: config.port,
    services: sender.registrations,
    logger,
  });
  return [
    {
      name: "sender-parts",
      address: "",
      stop: async () => {
        await sender.stop();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});
