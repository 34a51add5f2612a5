// `npm start`: the whole mesh in one process on its embedded default, no external servers.
import { enumVar, loadConfig, portVar, stringVar } from "../../lib/config.ts";
import { LOG_LEVELS } from "../../lib/logging.ts";
import { runProcess } from "../../lib/service-process.ts";
import { mintDevToken } from "../token/dev-token.ts";
import { startEmbeddedMesh } from "./embedded-mesh.ts";

const configSpec = {
  dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  edgeHost: stringVar("PARLEY_EDGE_HOST", { default: "127.0.0.1" }),
  edgePort: portVar("PARLEY_EDGE_PORT", { default: 8080 }),
  logLevel: enumVar("PARLEY_LOG_LEVEL", LOG_LEVELS, { default: "info" }),
};

await runProcess("parley", async (logger) => {
  const config = loadConfig(configSpec);
  const mesh = await startEmbeddedMesh({
    ...config,
    logger,
    // A dead service thread leaves a mesh that accepts sends it cannot store: end the process
    // (what was accepted is durable in the SQLite files) so the supervisor starts it again.
    onThreadFailure: () => void mesh.stop().finally(() => process.exit(1)),
  });
  // Printed plainly (besides the JSON logs) so a developer sees at once where to point a client.
  process.stdout.write(`\nParley is running (embedded profile, data in ${config.dataDir})\n`);
  process.stdout.write(`  edge: ${mesh.edgeUrl}\n`);
  for (const [name, address] of Object.entries(mesh.internal))
    process.stdout.write(`  ${name}: ${address} (gRPC)\n`);
  const dev = await mintDevToken({
    dataDir: config.dataDir,
    userId: "dev",
    deviceId: "dev",
    ttlMs: 86_400_000,
  });
  process.stdout.write(`\n  dev token (user dev, device dev, 24 h): ${dev.token}\n`);
  process.stdout.write("  another one: npm run -s token -- <user> <device>\n\n");
  return [{ name: "mesh", address: mesh.edgeUrl, stop: mesh.stop }];
});
