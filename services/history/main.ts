// The history service alone in its own process (cluster profile): `node services/history/main.ts`.
// Until the Pulsar and Cassandra adapters land, it runs on the embedded broker's file and the
// SQLite file in PARLEY_DATA_DIR.
import { join } from "node:path";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { durationVar, loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { DEFAULT_RETENTION_MS } from "./domain/history.ts";
import { createHistoryService, HISTORY_DEFAULT_PORT } from "./service.ts";

await runProcess("history", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("HISTORY", HISTORY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    retentionMs: durationVar("PARLEY_HISTORY_RETENTION", { default: DEFAULT_RETENTION_MS }),
  });
  const broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db"), logger });
  let history: Awaited<ReturnType<typeof createHistoryService>>;
  try {
    history = await createHistoryService({
      dbPath: join(config.dataDir, "parley.db"),
      broker,
      logger,
      retentionMs: config.retentionMs,
    });
  } catch (err) {
    await broker.close();
    throw err;
  }
  const server = await startGrpcService({
    name: "history",
    host: config.host,
    port: config.port,
    services: history.registrations,
    logger,
  });
  return [
    {
      name: "history-parts",
      address: "",
      stop: async () => {
        await history.stop();
        await broker.close();
      },
    },
    server,
  ];
});
