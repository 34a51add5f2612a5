// The delivery service alone in its own process (cluster profile): `node services/delivery/main.ts`.
// Until the Pulsar adapter lands, it runs on the embedded broker's file in PARLEY_DATA_DIR.
//
// Until the etcd adapter of the registry lands, it runs on an in-process registry. That registry
// cannot be shared across processes: no edge process can register its hosts or devices in it, so
// this process pushes nothing (every device looks offline and catches up through Sync) while
// presence, typing and GetPresence work. The embedded profile, where the edge and delivery share
// one process and one registry, is where pushes work today.
import { join } from "node:path";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { createInProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createDeliveryService, DELIVERY_DEFAULT_PORT } from "./service.ts";

await runProcess("delivery", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("DELIVERY", DELIVERY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  });
  const broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
  const registry = createInProcessRegistry();
  const delivery = await createDeliveryService({ broker, registry, logger });
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
      },
    },
    server,
  ];
});
