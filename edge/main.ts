// The edge alone in its own process (cluster profile): `node edge/main.ts`.
import { runProcess } from "../lib/service-process.ts";
import { createKeyServiceDeviceCheck } from "./auth/device-check.ts";
import { loadEdgeConfig } from "./config.ts";
import { startEdge } from "./server.ts";

await runProcess("edge", async (logger) => {
  const config = loadEdgeConfig();
  // Revocation: streams only for registered devices, removed devices' tokens refused (key.v1
  // GetDeviceStatus, cached briefly).
  const deviceCheck = createKeyServiceDeviceCheck(config.keyAddress);
  try {
    const edge = await startEdge(config, logger, { isDeviceActive: deviceCheck.isDeviceActive });
    const stop = async () => {
      await edge.stop();
      deviceCheck.close();
    };
    return [{ name: "edge", address: edge.url, stop }];
  } catch (err) {
    deviceCheck.close();
    throw err;
  }
});
