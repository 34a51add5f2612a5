// The connection service alone in its own process (cluster profile): `node services/connection/main.ts`.
import { loadServiceConfig, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { CONNECTION_DEFAULT_PORT, connectionServices } from "./service.ts";

await runProcess("connection", async (logger) => {
  const config = loadServiceConfig("CONNECTION", CONNECTION_DEFAULT_PORT);
  return [await startGrpcService({ name: "connection", ...config, services: connectionServices(), logger })];
});
