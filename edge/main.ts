// The edge alone in its own process: `node edge/main.ts`. PARLEY_PROFILE=cluster registers this
// host and its devices' routes in etcd, where delivery workers find them; the default, embedded,
// keeps them in an in-process registry (an edge alone, whose devices catch up through Sync).
import { loadProfile, openClusterRegistry } from "../lib/cluster-engines.ts";
import { runProcess } from "../lib/service-process.ts";
import { createKeyServiceDeviceCheck } from "./auth/device-check.ts";
import { loadEdgeConfig } from "./config.ts";
import { startEdge } from "./server.ts";

await runProcess("edge", async (logger) => {
  const config = loadEdgeConfig();
  const profile = loadProfile();
  const registry = profile.profile === "cluster" ? openClusterRegistry(profile.engines, logger) : undefined;
  // Revocation: streams only for registered devices, removed devices' tokens refused (key.v1
  // GetDeviceStatus, cached briefly).
  const deviceCheck = createKeyServiceDeviceCheck(config.keyAddress);
  try {
    const edge = await startEdge(config, logger, {
      isDeviceActive: deviceCheck.isDeviceActive,
      ...(registry === undefined ? {} : { registry }),
    });
    const stop = async () => {
      await edge.stop();
      deviceCheck.close();
      await registry?.close();
    };
    return [{ name: "edge", address: edge.url, stop }];
  } catch (err) {
    deviceCheck.close();
    await registry?.close();
    throw err;
  }
});
