// The connection service alone in its own process (cluster profile): `node services/connection/main.ts`.
// Until the Cassandra and Pulsar adapters land, it keeps contacts and groups in the embedded SQLite
// file and publishes through the embedded broker's file, both in PARLEY_DATA_DIR.
import { join } from "node:path";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { CONNECTION_DEFAULT_PORT, createConnectionService } from "./service.ts";

await runProcess("connection", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("CONNECTION", CONNECTION_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    // Where the key service answers GetIdentityKeys (devices shown with ACCEPTED connections).
    keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
  });
  const broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
  const connection = createConnectionService({
    store: { path: join(config.dataDir, "parley.db") },
    broker,
    logger,
    devices: { keyAddress: config.keyAddress },
  });
  const server = await startGrpcService({
    name: "connection",
    host: config.host,
    port: config.port,
    services: connection.registrations,
    logger,
  });
  // Stopped in reverse: the server first (drains calls), then the relay and store, then the broker.
  return [
    {
      name: "connection-parts",
      address: "",
      stop: async () => {
        await connection.stop();
        await broker.close();
      },
    },
    server,
  ];
});
