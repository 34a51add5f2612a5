// The history service alone in its own process: `node services/history/main.ts`.
// PARLEY_PROFILE=cluster runs it on Cassandra (history, inboxes, receipts; rows expire by TTL) and
// Pulsar; the default, embedded, on the SQLite file and the embedded broker's file in
// PARLEY_DATA_DIR, with a retention sweep.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadProfile, openClusterBroker, openClusterCassandra } from "../../lib/cluster-engines.ts";
import { durationVar, loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createCassandraHistoryStore } from "./adapters/cassandra/cassandra-history-store.ts";
import { DEFAULT_RETENTION_MS } from "./domain/history.ts";
import { createHistoryService, HISTORY_DEFAULT_PORT } from "./service.ts";

await runProcess("history", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("HISTORY", HISTORY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    retentionMs: durationVar("PARLEY_HISTORY_RETENTION", { default: DEFAULT_RETENTION_MS }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let history: Awaited<ReturnType<typeof createHistoryService>>;
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const cassandra = await openClusterCassandra(profile.engines, logger);
    broker = await openClusterBroker(profile.engines, logger);
    const store = await createCassandraHistoryStore({ client: cassandra, logger });
    history = await createHistoryService({ store, broker, logger, retentionMs: config.retentionMs });
    closeEngines = () => cassandra.shutdown();
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db"), logger });
    history = await createHistoryService({
      dbPath: join(config.dataDir, "parley.db"),
      broker,
      logger,
      retentionMs: config.retentionMs,
    });
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
        await closeEngines();
      },
    },
    server,
  ];
});
