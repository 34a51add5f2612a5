// The edge alone in its own process (cluster profile): `node edge/main.ts`.
import { runProcess } from "../lib/service-process.ts";
import { loadEdgeConfig } from "./config.ts";
import { startEdge } from "./server.ts";

await runProcess("edge", async (logger) => {
  const edge = await startEdge(loadEdgeConfig(), logger);
  return [{ name: "edge", address: edge.url, stop: edge.stop }];
});
