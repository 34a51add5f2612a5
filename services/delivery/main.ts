// The delivery service alone in its own process (cluster profile): `node services/delivery/main.ts`.
import { loadServiceConfig, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { DELIVERY_DEFAULT_PORT, deliveryServices } from "./service.ts";

await runProcess("delivery", async (logger) => {
  const config = loadServiceConfig("DELIVERY", DELIVERY_DEFAULT_PORT);
  return [await startGrpcService({ name: "delivery", ...config, services: deliveryServices(), logger })];
});
