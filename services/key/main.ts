// The key service alone in its own process (cluster profile): `node services/key/main.ts`.
// Until the Cassandra and Pulsar adapters land, it keeps its keys in the embedded SQLite file and
// publishes through the embedded broker's file, both in PARLEY_DATA_DIR.
import { join } from "node:path";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createKeyService, KEY_DEFAULT_PORT } from "./service.ts";

await runProcess("key", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("KEY", KEY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  });
  const broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
  const key = await createKeyService({
    store: { path: join(config.dataDir, "parley.db") },
    broker,
    logger,
  });
  const server = await startGrpcService({
    name: "key",
    host: config.host,
    port: config.port,
    services: key.registrations,
    logger,
  });
  // Stopped in reverse: the server first (drains calls), then the relay and store, then the broker.
  return [
    {
      name: "key-parts",
      address: "",
      stop: async () => {
        await key.stop();
        await broker.close();
      },
    },
    server,
  ];
});
