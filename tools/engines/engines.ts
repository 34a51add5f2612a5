// `npm run engines -- up | down | status | env [--only redis,etcd,cassandra,pulsar]`
//
// Installs what is missing and runs the cluster profile's engines on 127.0.0.1, each with its data,
// configuration, log and PID file under one state folder ($PARLEY_ENGINES_DIR, default
// $TMPDIR/parley-engines). `up` is idempotent (running engines are left alone) and prints the
// variables Parley's processes and tests read (also written to <state>/env.sh); `down` stops
// exactly the processes it started, by PID; `status` says what runs and how much memory it uses.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultEnginesStateDir, ENGINE_VARIABLES, ENGINES_SWITCH } from "../../lib/engines.ts";
import type { EngineName, EngineSpec } from "./engine-specs.ts";
import { ENGINE_NAMES, enginePorts, engineSpecs } from "./engine-specs.ts";
import {
  findOwnedProcess,
  portTaken,
  residentMiB,
  startDetached,
  stopOwnedProcess,
  waitUntilReady,
} from "./process-control.ts";

const here = dirname(fileURLToPath(import.meta.url));
const MIN_FREE_DISK_BYTES = 3 * 1024 ** 3;

class EngineError extends Error {}

function parseArgs(argv: readonly string[]) {
  const [command = "status", ...rest] = argv;
  let only: EngineName[] = [...ENGINE_NAMES];
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    const value = arg?.startsWith("--only=")
      ? arg.slice("--only=".length)
      : arg === "--only"
        ? rest[++i]
        : undefined;
    if (value === undefined)
      throw new EngineError(
        `unknown option ${arg}; usage: engines up|down|status|env [--only ${ENGINE_NAMES.join(",")}]`,
      );
    const names = value.split(",").map((name) => name.trim());
    const unknown = names.filter((name) => !ENGINE_NAMES.includes(name as EngineName));
    if (unknown.length > 0)
      throw new EngineError(`unknown engine ${unknown.join(", ")}; engines are ${ENGINE_NAMES.join(", ")}`);
    only = names as EngineName[];
  }
  if (!["up", "down", "status", "env"].includes(command)) {
    throw new EngineError(`unknown command ${command}; usage: engines up|down|status|env [--only …]`);
  }
  return { command, only };
}

const stateDir = resolve(defaultEnginesStateDir());
const offset = Number(process.env.PARLEY_ENGINES_PORT_OFFSET ?? 0);
if (!Number.isInteger(offset) || offset < 0 || offset > 40_000) {
  log("engines: PARLEY_ENGINES_PORT_OFFSET must be an integer 0-40000");
  process.exit(1);
}
const ports = enginePorts(offset);
const libDir = (engine: "cassandra" | "pulsar") => join(stateDir, "lib", engine);
const specs = engineSpecs(ports, libDir);
const engineDir = (name: EngineName) => join(stateDir, name);
const pidFile = (name: EngineName) => join(engineDir(name), "pid");
const logFile = (name: EngineName) => join(engineDir(name), "out.log");
const running = (name: EngineName) => findOwnedProcess(pidFile(name), engineDir(name));

function envLines(): string[] {
  return [
    `export ${ENGINES_SWITCH}=1`,
    `export ${ENGINE_VARIABLES.redisUrl}=${specs.redis.endpoint}`,
    `export ${ENGINE_VARIABLES.etcdEndpoints}=${specs.etcd.endpoint}`,
    `export ${ENGINE_VARIABLES.cassandraContactPoints}=${specs.cassandra.endpoint}`,
    `export ${ENGINE_VARIABLES.cassandraDatacenter}=datacenter1`,
    `export ${ENGINE_VARIABLES.pulsarWebUrl}=${specs.pulsar.endpoint}`,
  ];
}

// ---- installation -------------------------------------------------------------------------

function have(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

function aptInstall(packages: readonly string[]) {
  if (packages.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new EngineError(
      `missing ${packages.join(", ")}: install them with apt-get (needs root), then run again`,
    );
  }
  log(`installing ${packages.join(", ")} from Debian packages`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = () =>
    spawnSync("apt-get", ["install", "-y", "--no-install-recommends", ...packages], {
      stdio: ["ignore", process.stderr, process.stderr],
      env,
    });
  if (install().status !== 0) {
    spawnSync("apt-get", ["update"], { stdio: ["ignore", process.stderr, process.stderr], env });
    if (install().status !== 0) throw new EngineError(`apt-get could not install ${packages.join(", ")}`);
  }
}

function javaMajorVersion(): number | undefined {
  const result = spawnSync("java", ["-version"], { encoding: "utf8" });
  const match = /version "(\d+)/.exec(`${result.stderr}${result.stdout}`);
  return match ? Number(match[1]) : undefined;
}

function ensureInstalled(names: readonly EngineName[]) {
  const packages: string[] = [];
  if (names.includes("redis") && !have("redis-server")) packages.push("redis-server");
  if (names.includes("etcd") && !have("etcd")) packages.push("etcd-server");
  const needsJava = names.includes("cassandra") || names.includes("pulsar");
  if (needsJava && !have("mvn")) packages.push("maven");
  if (needsJava && !have("java")) packages.push("openjdk-17-jre-headless");
  aptInstall(packages);
  if (needsJava) {
    const major = javaMajorVersion();
    if (major !== 17) {
      throw new EngineError(
        `Cassandra 5.0 and Pulsar 4.0 run here on JDK 17, but \`java -version\` says ${major ?? "nothing"}: put a JDK 17 first on PATH`,
      );
    }
  }
  for (const engine of ["cassandra", "pulsar"] as const) {
    if (names.includes(engine)) resolveJars(engine);
  }
}

/** Resolves an engine's jars with Maven into <state>/lib/<engine>, again only when its pom changed. */
function resolveJars(engine: "cassandra" | "pulsar") {
  const pom = join(here, "maven", engine, "pom.xml");
  const digest = createHash("sha256").update(readFileSync(pom)).digest("hex");
  const target = libDir(engine);
  const stamp = join(target, ".pom-sha256");
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === digest) return;
  log(`resolving ${engine}'s jars with Maven (first time: a few hundred MB)`);
  rmSync(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  const result = spawnSync(
    "mvn",
    [
      "-q",
      "-B",
      "-Dstyle.color=never",
      "-s",
      join(here, "maven", "settings.xml"),
      "-f",
      pom,
      "dependency:copy-dependencies",
      `-DoutputDirectory=${target}`,
    ],
    // Its output goes to stderr: stdout carries only the variables `up` prints for `eval`.
    { stdio: ["ignore", process.stderr, process.stderr] },
  );
  if (result.status !== 0)
    throw new EngineError(`Maven could not resolve ${engine}'s jars (see its output above)`);
  writeFileSync(stamp, digest);
  log(`${engine}: ${readdirSync(target).filter((f) => f.endsWith(".jar")).length} jars`);
}

// ---- commands -------------------------------------------------------------------------------

async function up(names: readonly EngineName[]) {
  mkdirSync(stateDir, { recursive: true });
  const free = statfsSync(stateDir);
  if (free.bavail * free.bsize < MIN_FREE_DISK_BYTES) {
    throw new EngineError(
      `only ${((free.bavail * free.bsize) / 1024 ** 3).toFixed(1)} GiB free under ${stateDir}; the engines need ${MIN_FREE_DISK_BYTES / 1024 ** 3} GiB`,
    );
  }
  ensureInstalled(names);
  const toStart: EngineSpec[] = [];
  for (const name of names) {
    if (running(name)) continue;
    for (const port of specs[name].ports) {
      if (await portTaken(port)) {
        throw new EngineError(
          `${name} needs 127.0.0.1:${port}, which another process holds; stop it or set PARLEY_ENGINES_PORT_OFFSET`,
        );
      }
    }
    toStart.push(specs[name]);
  }
  // Started together: the two JVMs take most of the time, and overlap on 2 cores still saves some.
  await Promise.all(
    names.map(async (name) => {
      const spec = specs[name];
      const started = Date.now();
      const dir = engineDir(name);
      if (toStart.includes(spec)) {
        mkdirSync(dir, { recursive: true });
        const { command, args } = spec.prepare(dir);
        startDetached({ command, args, cwd: dir, logFile: logFile(name), pidFile: pidFile(name) });
      }
      await waitUntilReady({
        name,
        probe: spec.ready,
        alive: () => running(name) !== undefined,
        logFile: logFile(name),
        timeoutMs: spec.startTimeoutMs,
      });
      const owned = running(name);
      const took = toStart.includes(spec)
        ? `ready in ${((Date.now() - started) / 1000).toFixed(1)} s`
        : "already running";
      log(
        `${name.padEnd(9)} ${spec.endpoint.padEnd(24)} pid ${owned?.pid} ${took}, ${owned ? residentMiB(owned.pid) : "?"} MiB`,
      );
    }),
  );
  const envFile = join(stateDir, "env.sh");
  writeFileSync(envFile, `${envLines().join("\n")}\n`);
  log(`environment for Parley's processes and tests: source ${envFile}`);
}

async function down(names: readonly EngineName[]) {
  // Stopped in reverse dependency order is not needed (they do not use each other), but the
  // JVMs are asked first because they take longest to flush.
  await Promise.all(
    names.map(async (name) => {
      const outcome = await stopOwnedProcess(pidFile(name), engineDir(name), specs[name].stopGraceMs);
      log(`${name.padEnd(9)} ${outcome.replace("_", " ")}`);
    }),
  );
}

function status(names: readonly EngineName[]) {
  let all = true;
  for (const name of names) {
    const owned = running(name);
    if (!owned) all = false;
    log(
      `${name.padEnd(9)} ${owned ? `running  pid ${owned.pid}  ${residentMiB(owned.pid)} MiB` : "stopped"}  ${specs[name].endpoint}`,
    );
  }
  log(`state folder: ${stateDir}`);
  process.exitCode = all ? 0 : 3;
}

function log(line: string) {
  process.stderr.write(`${line}\n`);
}

try {
  const { command, only } = parseArgs(process.argv.slice(2));
  if (command === "up") {
    await up(only);
    process.stdout.write(`${envLines().join("\n")}\n`);
  } else if (command === "down") await down(only);
  else if (command === "env") process.stdout.write(`${envLines().join("\n")}\n`);
  else status(only);
} catch (err) {
  if (err instanceof EngineError) {
    log(`engines: ${err.message}`);
    process.exit(1);
  }
  throw err;
}
