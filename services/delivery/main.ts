// A delivery worker in its own process: `node services/delivery/main.ts`. PARLEY_PROFILE=cluster
// runs it on Pulsar (several workers share the subscriptions), with routes read from etcd and
// fan-out checkpoints, presence and the typing rate limit in Redis (shared by every worker); the
// default, embedded, on the embedded broker's file in PARLEY_DATA_DIR and an in-process registry,
// which no edge process can write: there it pushes nothing (devices catch up through Sync), and
// only the embedded mesh, where the edge shares the process, pushes.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import {
  closeRedisClient,
  loadProfile,
  openClusterBroker,
  openClusterRedis,
  openClusterRegistry,
} from "../../lib/cluster-engines.ts";
import { boolVar, loadConfig, optional, stringVar } from "../../lib/config.ts";
import { killSelf, takeKillFile } from "../../lib/fault-hooks.ts";
import type { Logger } from "../../lib/logging.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { createInProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import type { Registry } from "../../lib/registry/registry.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createRedisCheckpointStore } from "./adapters/redis/checkpoint-store.ts";
import { createRedisPresenceStore } from "./adapters/redis/presence-store.ts";
import type { CheckpointStore } from "./domain/ports.ts";
import type { DeliveryServiceOptions } from "./service.ts";
import { createDeliveryService, DELIVERY_DEFAULT_PORT, TYPING_RATE } from "./service.ts";

await runProcess("delivery", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("DELIVERY", DELIVERY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    ...faultSwitchesSpec(),
  });
  const profile = loadProfile();
  let broker: Broker;
  let registry: Registry;
  let stores: Pick<DeliveryServiceOptions, "checkpoints" | "presenceStore" | "typingLimiter"> = {};
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-delivery");
    const prefix = profile.engines.names.redisPrefix;
    broker = await openClusterBroker(profile.engines, logger);
    registry = openClusterRegistry(profile.engines, logger);
    stores = {
      checkpoints: withFaultSwitches(
        config,
        createRedisCheckpointStore(redis, { keyPrefix: `${prefix}delivery:checkpoint:` }),
        logger,
      ),
      presenceStore: createRedisPresenceStore(redis, { keyPrefix: `${prefix}delivery:presence:` }),
      typingLimiter: createRedisRateLimiter(redis, TYPING_RATE, {
        keyPrefix: `${prefix}delivery:rate:typing:`,
      }),
    };
    closeEngines = () => closeRedisClient(redis);
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
    registry = createInProcessRegistry();
  }
  const delivery = await createDeliveryService({ broker, registry, logger, ...stores });
  const server = await startGrpcService({
    name: "delivery",
    host: config.host,
    port: config.port,
    services: delivery.registrations,
    logger,
  });
  return [
    {
      name: "delivery-parts",
      address: "",
      stop: async () => {
        await delivery.stop();
        await registry.close();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});

// FAULT TESTS ONLY (test/fault), cluster profile. Unset, they change nothing; each one set is
// logged at start-up. (Functions, not consts: used while the top-level await above runs.)
function faultSwitchesSpec() {
  return {
    // Armed by creating this file: the next message batch pushed and checkpointed removes it and
    // SIGKILLs the worker before its event is acknowledged, in the middle of the fan-out. With
    // several workers armed, only the one that removes the file dies.
    killFile: optional(stringVar("PARLEY_DELIVERY_FAULT_KILL_FILE")),
    // A control run's bug: message batches are checkpointed when looked up, before the push, so
    // a worker dying in between leaves batches marked done that no device got.
    checkpointBeforePush: boolVar("PARLEY_DELIVERY_FAULT_CHECKPOINT_BEFORE_PUSH", { default: false }),
  };
}

function withFaultSwitches(
  config: { readonly killFile: string | undefined; readonly checkpointBeforePush: boolean },
  checkpoints: CheckpointStore,
  logger: Logger,
): CheckpointStore {
  const { killFile, checkpointBeforePush } = config;
  if (killFile === undefined && !checkpointBeforePush) return checkpoints;
  logger.warn(
    { killFile, checkpointBeforePush },
    "FAULT TEST HOOK: delivery checkpoints are instrumented for a fault test",
  );
  const isMessageBatch = (batchId: string) => batchId.startsWith("m:");
  const record = async (batchId: string) => {
    await checkpoints.record(batchId);
    if (killFile !== undefined && isMessageBatch(batchId) && takeKillFile(killFile)) {
      killSelf(logger, "in the middle of a fan-out", { batchId });
    }
  };
  return {
    async has(batchId) {
      if (!checkpointBeforePush || !isMessageBatch(batchId)) return checkpoints.has(batchId);
      if (await checkpoints.has(batchId)) return true;
      await record(batchId);
      return false;
    },
    async record(batchId) {
      if (checkpointBeforePush && isMessageBatch(batchId)) return;
      await record(batchId);
    },
  };
}
