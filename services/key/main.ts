// The key service alone in its own process (cluster profile): `node services/key/main.ts`.
import { loadServiceConfig, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { KEY_DEFAULT_PORT, keyServices } from "./service.ts";

await runProcess("key", async (logger) => {
  const config = loadServiceConfig("KEY", KEY_DEFAULT_PORT);
  return [await startGrpcService({ name: "key", ...config, services: keyServices(), logger })];
});
