// The sender service alone in its own process (cluster profile): `node services/sender/main.ts`.
import { loadServiceConfig, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { SENDER_DEFAULT_PORT, senderServices } from "./service.ts";

await runProcess("sender", async (logger) => {
  const config = loadServiceConfig("SENDER", SENDER_DEFAULT_PORT);
  return [await startGrpcService({ name: "sender", ...config, services: senderServices(), logger })];
});
