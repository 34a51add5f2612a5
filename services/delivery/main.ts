// A delivery worker in its own process: `node services/delivery/main.ts`. PARLEY_PROFILE=cluster
// runs it on Pulsar (several workers share the subscriptions), with routes read from etcd and
// fan-out checkpoints and presence in Redis; the default, embedded, on the embedded broker's file
// in PARLEY_DATA_DIR and an in-process registry, which no edge process can write: there it pushes
// nothing (devices catch up through Sync), and only the embedded mesh, where the edge shares the
// process, pushes.
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
import { loadConfig, stringVar } from "../../lib/config.ts";
import { createInProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import type { Registry } from "../../lib/registry/registry.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createRedisCheckpointStore } from "./adapters/redis/checkpoint-store.ts";
import { createRedisPresenceStore } from "./adapters/redis/presence-store.ts";
import type { DeliveryServiceOptions } from "./service.ts";
import { createDeliveryService, DELIVERY_DEFAULT_PORT } from "./service.ts";

await runProcess("delivery", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("DELIVERY", DELIVERY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let registry: Registry;
  let stores: Pick<DeliveryServiceOptions, "checkpoints" | "presenceStore"> = {};
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-delivery");
    const prefix = profile.engines.names.redisPrefix;
    broker = await openClusterBroker(profile.engines, logger);
    registry = openClusterRegistry(profile.engines, logger);
    stores = {
      checkpoints: createRedisCheckpointStore(redis, { keyPrefix: `${prefix}delivery:checkpoint:` }),
      presenceStore: createRedisPresenceStore(redis, { keyPrefix: `${prefix}delivery:presence:` }),
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
