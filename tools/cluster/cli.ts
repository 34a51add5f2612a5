// `npm run cluster -- up | down | status`
//
// `up` starts the real engines (`npm run engines -- up`) and the cluster profile on them: one
// process per service, two delivery workers and two edge hosts, each on its own port, all logging
// to <state>/cluster/logs. Processes run detached with PID files; `down` stops them by PID, then
// the engines (`--keep-engines` leaves those running).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { DEFAULT_CLUSTER_NAMES } from "../../lib/cluster-engines.ts";
import { defaultEnginesStateDir, engineTargets } from "../../lib/engines.ts";
import type { ClusterProcessSpec } from "./cluster.ts";
import { clusterLayout, repoRoot, startCluster } from "./cluster.ts";

const stateDir = resolve(defaultEnginesStateDir());
const clusterDir = join(stateDir, "cluster");
const logDir = join(clusterDir, "logs");
const pidDir = join(clusterDir, "pids");

/** The services' and edges' usual ports: key 7102, connection 7101, … edge-1 8080 (push 7110). */
const CLUSTER_PORTS = [7102, 7101, 7103, 7104, 7105, 7106, 8080, 7110, 8081, 7111];

function engines(command: "up" | "down"): Record<string, string> {
  const result = spawnSync(process.execPath, [join(repoRoot, "tools/engines/engines.ts"), command], {
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8",
  });
  if (result.status !== 0) throw new Error(`npm run engines -- ${command} failed`);
  const env: Record<string, string> = {};
  for (const line of result.stdout.split("\n")) {
    const match = /^export (\w+)=(.*)$/.exec(line.trim());
    if (match?.[1] && match[2] !== undefined) env[match[1]] = match[2];
  }
  return env;
}

function ownedPid(name: string): number | undefined {
  const file = join(pidDir, `${name}.pid`);
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, "utf8").trim());
  try {
    // Ours only if it still runs a Parley script from this repository.
    const commandLine = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    const isClusterProcess = readFileSync(`/proc/${pid}/environ`, "utf8").includes("PARLEY_PROFILE=cluster");
    return commandLine.includes(".ts") && isClusterProcess ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function stopByPid(name: string) {
  const pid = ownedPid(name);
  rmSync(join(pidDir, `${name}.pid`), { force: true });
  if (pid === undefined) return "not running";
  process.kill(pid, "SIGTERM");
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return "stopped";
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  process.kill(pid, "SIGKILL");
  return "killed";
}

async function up() {
  const env = engines("up");
  const targets = engineTargets({ ...process.env, ...env });
  if (!targets) throw new Error("the engines did not report their addresses");
  mkdirSync(clusterDir, { recursive: true });
  const layout = clusterLayout({
    engines: targets,
    names: DEFAULT_CLUSTER_NAMES,
    dataDir: clusterDir,
    ports: CLUSTER_PORTS,
  });
  const running = layout.processes.filter((spec) => ownedPid(spec.name) !== undefined);
  if (running.length > 0) {
    throw new Error(
      `already running: ${running.map((s) => s.name).join(", ")}; \`npm run cluster -- down\` first`,
    );
  }
  const cluster = await startCluster(layout, { logDir, pidDir, detached: true });
  for (const spec of layout.processes) {
    process.stderr.write(
      `${spec.name.padEnd(11)} ${describe(spec)}  pid ${cluster.running.get(spec.name)?.pid}\n`,
    );
  }
  process.stderr.write(
    `logs: ${logDir}\ntokens: PARLEY_DATA_DIR=${clusterDir} npm run -s token -- <user> <device>\n`,
  );
  process.stdout.write(`${layout.edgeUrls.join("\n")}\n`);
  // Detached: this CLI may exit while they run.
  process.exit(0);
}

function describe(spec: ClusterProcessSpec) {
  return spec.kind === "edge" ? `http://127.0.0.1:${spec.port}` : `127.0.0.1:${spec.port} (gRPC)`;
}

async function down(keepEngines: boolean) {
  const names = existsSync(pidDir) ? readdirSync(pidDir).map((f) => f.replace(/\.pid$/, "")) : [];
  // Edges first, so devices are not pushed to by workers that are going away.
  names.sort((a, b) => Number(b.startsWith("edge")) - Number(a.startsWith("edge")));
  for (const name of names) process.stderr.write(`${name.padEnd(11)} ${await stopByPid(name)}\n`);
  if (!keepEngines) engines("down");
}

function status() {
  const names = existsSync(pidDir) ? readdirSync(pidDir).map((f) => f.replace(/\.pid$/, "")) : [];
  if (names.length === 0) process.stderr.write("no cluster processes\n");
  for (const name of names) {
    const pid = ownedPid(name);
    process.stderr.write(`${name.padEnd(11)} ${pid ? `running pid ${pid}` : "stopped"}\n`);
  }
  spawnSync(process.execPath, [join(repoRoot, "tools/engines/engines.ts"), "status"], { stdio: "inherit" });
}

const [command = "status", ...flags] = process.argv.slice(2);
try {
  if (command === "up") await up();
  else if (command === "down") await down(flags.includes("--keep-engines"));
  else if (command === "status") status();
  else throw new Error(`unknown command ${command}; usage: cluster up | down [--keep-engines] | status`);
} catch (err) {
  process.stderr.write(`cluster: ${(err as Error).message}\n`);
  process.exit(1);
}
