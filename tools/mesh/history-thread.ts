// The embedded mesh's history service on its own worker thread (tools/mesh/service-thread.ts): its
// SQLite file is its own (history.db), so neither thread ever waits for the other's write lock.
import { startGrpcService } from "../../lib/service-process.ts";
import { prepareHistoryFile } from "../../services/history/adapters/sqlite/history-file.ts";
import { createHistoryService } from "../../services/history/service.ts";
import { runServiceThread } from "./service-thread.ts";

export interface HistoryThreadSettings {
  readonly dataDir: string;
  readonly connectionAddress: string;
}

await runServiceThread<HistoryThreadSettings>(async ({ settings, broker, logger }) => {
  const history = await createHistoryService({
    dbPath: prepareHistoryFile(settings.dataDir),
    broker,
    logger,
    connectionAddress: settings.connectionAddress,
  });
  try {
    const server = await startGrpcService({
      name: "history",
      host: "127.0.0.1",
      port: 0,
      services: history.registrations,
      logger,
    });
    return {
      address: server.address,
      async stop() {
        // The server first, so calls in flight finish against a running history.
        await server.stop();
        await history.stop();
      },
    };
  } catch (err) {
    await history.stop();
    throw err;
  }
});
