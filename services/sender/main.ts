// The sender alone in its own process (cluster profile): `node services/sender/main.ts`.
// Until the Pulsar adapter lands, it runs on the embedded broker's file in PARLEY_DATA_DIR.
import { join } from "node:path";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createSenderService, SENDER_DEFAULT_PORT } from "./service.ts";

await runProcess("sender", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("SENDER", SENDER_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
  });
  const broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
  const sender = await createSenderService({
    broker,
    keyAddress: config.keyAddress,
    logger,
    idempotencyPath: join(config.dataDir, "parley.db"),
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
      },
    },
    server,
  ];
});
