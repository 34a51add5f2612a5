// The sender alone in its own process: `node services/sender/main.ts`. PARLEY_PROFILE=cluster runs
// it on Pulsar, with idempotency keys and send rate limits in Redis (shared by every sender
// process); the default, embedded, on the embedded broker's file and the SQLite file in
// PARLEY_DATA_DIR, with rate limits in memory.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import {
  closeRedisClient,
  loadProfile,
  openClusterBroker,
  openClusterRedis,
} from "../../lib/cluster-engines.ts";
import { boolVar, loadConfig, optional, stringVar } from "../../lib/config.ts";
import { brokerWith, killSelf, takeKillFile } from "../../lib/fault-hooks.ts";
import type { Logger } from "../../lib/logging.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createRedisIdempotencyStore } from "./adapters/redis/idempotency-store.ts";
import type { IdempotencyStore } from "./domain/ports.ts";
import type { SenderServiceOptions } from "./service.ts";
import { createSenderService, DEFAULT_SEND_RATE, SENDER_DEFAULT_PORT } from "./service.ts";

await runProcess("sender", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("SENDER", SENDER_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
    connectionAddress: stringVar("PARLEY_CONNECTION_ADDRESS", { default: "127.0.0.1:7101" }),
    ...faultSwitchesSpec(),
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
  const faults = applyFaultSwitches(config, broker, stores, logger);
  const sender = await createSenderService({
    broker: faults.broker,
    keyAddress: config.keyAddress,
    connectionAddress: config.connectionAddress,
    logger,
    ...faults.stores,
  });
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

// FAULT TESTS ONLY (test/fault). Unset, they change nothing; each one set is logged at start-up.
// (Functions, not consts: they are used while the top-level await above is still running.)
function faultSwitchesSpec() {
  return {
    // Armed by creating this file: the next message publish the broker confirms removes it and
    // SIGKILLs the process, before the idempotency key is marked published and the client answered.
    killFile: optional(stringVar("PARLEY_SENDER_FAULT_KILL_FILE")),
    // false: no idempotency key is remembered (a control run: a retry gets a new message id).
    idempotency: boolVar("PARLEY_SENDER_IDEMPOTENCY", { default: true }),
  };
}

function applyFaultSwitches(
  config: { readonly killFile: string | undefined; readonly idempotency: boolean },
  broker: Broker,
  stores: Pick<SenderServiceOptions, "idempotency" | "rateLimiter" | "idempotencyPath">,
  logger: Logger,
): { broker: Broker; stores: Pick<SenderServiceOptions, "idempotency" | "rateLimiter" | "idempotencyPath"> } {
  let faultyBroker = broker;
  const { killFile } = config;
  if (killFile !== undefined) {
    logger.warn(
      { killFile },
      "FAULT TEST HOOK: this sender SIGKILLs itself after a publish once the file exists",
    );
    faultyBroker = brokerWith(broker, {
      async publish(topic, message) {
        const result = await broker.publish(topic, message);
        if (topic === Topics.messages && takeKillFile(killFile)) {
          killSelf(logger, "after the broker confirmed a publish", { killFile });
        }
        return result;
      },
    });
  }
  if (config.idempotency) return { broker: faultyBroker, stores };
  logger.warn("FAULT TEST CONTROL: PARLEY_SENDER_IDEMPOTENCY=false, retried sends get new message ids");
  const forgetful: IdempotencyStore = {
    get: async () => undefined,
    reserve: async (_key, record) => record,
    markPublished: async () => {},
  };
  return { broker: faultyBroker, stores: { ...stores, idempotency: forgetful } };
}
