// The history service alone in its own process (cluster profile): `node services/history/main.ts`.
import { loadServiceConfig, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { HISTORY_DEFAULT_PORT, historyServices } from "./service.ts";

await runProcess("history", async (logger) => {
  const config = loadServiceConfig("HISTORY", HISTORY_DEFAULT_PORT);
  return [await startGrpcService({ name: "history", ...config, services: historyServices(), logger })];
});
