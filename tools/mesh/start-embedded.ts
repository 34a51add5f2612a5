// `npm start`: the whole mesh in one process on its embedded default, no external servers.
import { enumVar, loadConfig, portVar, stringVar } from "../../lib/config.ts";
import { LOG_LEVELS } from "../../lib/logging.ts";
import { runProcess } from "../../lib/service-process.ts";
import { startEmbeddedMesh } from "./embedded-mesh.ts";

const configSpec = {
  dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  edgeHost: stringVar("PARLEY_EDGE_HOST", { default: "127.0.0.1" }),
  edgePort: portVar("PARLEY_EDGE_PORT", { default: 8080 }),
  logLevel: enumVar("PARLEY_LOG_LEVEL", LOG_LEVELS, { default: "info" }),
};

await runProcess("parley", async (logger) => {
  const config = loadConfig(configSpec);
  const mesh = await startEmbeddedMesh({ ...config, logger });
  // Printed plainly (besides the JSON logs) so a developer sees at once where to point a client.
  process.stdout.write(`\nParley is running (embedded profile, data in ${config.dataDir})\n`);
  process.stdout.write(`  edge: ${mesh.edgeUrl}\n`);
  for (const [name, address] of Object.entries(mesh.internal))
    process.stdout.write(`  ${name}: ${address} (gRPC)\n`);
  process.stdout.write("\n");
  return [{ name: "mesh", address: mesh.edgeUrl, stop: mesh.stop }];
});
