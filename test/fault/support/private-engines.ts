// Engines of one test file's own (`npm run engines` with a state folder and a port offset of its
// own), for the scenarios that restart an engine: restarting the shared Redis, Pulsar or etcd would
// break every other test file running beside this one.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../../../tools/cluster/cluster.ts";

export type PrivateEngineName = "redis" | "etcd" | "pulsar";

export interface PrivateEngines {
  /** The variables `npm run engines -- up` printed (PARLEY_REDIS_URL...), for the engines started. */
  readonly env: Readonly<Record<string, string>>;
  readonly stateDir: string;
  /** Stops the engines (as `npm run engines -- down` does: SIGTERM, then SIGKILL after a grace). */
  stop(names: readonly PrivateEngineName[]): Promise<void>;
  /** Starts them again on the same ports; `wipe` removes their data first (a Redis that lost everything). */
  start(names: readonly PrivateEngineName[], options?: { readonly wipe?: boolean }): Promise<void>;
  /** Stops every engine started here and removes the state folder. */
  close(): Promise<void>;
}

/**
 * Engines' jars (Pulsar's, 235 MB) are resolved by Maven once into this folder and shared by every
 * private set, instead of once per state folder.
 */
const SHARED_LIB_DIR = join(tmpdir(), "parley-fault-engines-lib");

/** Starts `names` on free ports (an offset that collides with another set is tried again). */
export async function startPrivateEngines(names: readonly PrivateEngineName[]): Promise<PrivateEngines> {
  mkdirSync(SHARED_LIB_DIR, { recursive: true });
  const stateDir = mkdtempSync(join(tmpdir(), "parley-fault-engines-"));
  symlinkSync(SHARED_LIB_DIR, join(stateDir, "lib"));
  let lastError: unknown;
  for (let attempt = 0; attempt < 6; attempt++) {
    // Offsets keep every engine port under 32768, out of the range the OS hands out for port 0.
    const offset = 2_000 + 10 * Math.floor(Math.random() * 1_000);
    const engines = (command: string, only: readonly PrivateEngineName[]) =>
      runEngines(command, only, stateDir, offset);
    try {
      const env = parseEnv(await engines("up", names));
      const started = new Set(names);
      // The engines are detached (they outlive `npm run engines`): should this process end without
      // close() (a timed-out worker), kill them by their PID files rather than leave them running.
      const orphanGuard = () => killByPidFiles(stateDir, [...started]);
      process.once("exit", orphanGuard);
      return {
        env,
        stateDir,
        async stop(which) {
          await engines("down", which);
        },
        async start(which, options = {}) {
          if (options.wipe) {
            for (const name of which) rmSync(join(stateDir, name, "data"), { recursive: true, force: true });
          }
          await engines("up", which);
        },
        async close() {
          process.off("exit", orphanGuard);
          try {
            await engines("down", [...started]);
          } finally {
            rmSync(stateDir, { recursive: true, force: true });
          }
        },
      };
    } catch (err) {
      lastError = err;
      await runEngines("down", names, stateDir, offset).catch(() => {});
      if (!String(err).includes("another process holds")) break;
    }
  }
  rmSync(stateDir, { recursive: true, force: true });
  throw lastError;
}

function runEngines(
  command: string,
  only: readonly PrivateEngineName[],
  stateDir: string,
  offset: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["tools/engines/engines.ts", command, "--only", only.join(",")], {
      cwd: repoRoot,
      env: {
        ...process.env,
        PARLEY_ENGINES_DIR: stateDir,
        PARLEY_ENGINES_PORT_OFFSET: String(offset),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString("utf8");
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString("utf8");
    });
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`engines ${command} --only ${only.join(",")} exited ${code}: ${stderr.trim()}`));
    });
  });
}

function parseEnv(stdout: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of stdout.split("\n")) {
    const match = /^export ([A-Z_]+)=(.*)$/.exec(line.trim());
    if (match) env[match[1] as string] = match[2] as string;
  }
  return env;
}

function killByPidFiles(stateDir: string, names: readonly PrivateEngineName[]): void {
  for (const name of names) {
    try {
      const pid = Number(readFileSync(join(stateDir, name, "pid"), "utf8").trim());
      if (Number.isInteger(pid) && pid > 1) process.kill(pid, "SIGKILL");
    } catch {
      // Not running, or already gone.
    }
  }
  rmSync(stateDir, { recursive: true, force: true });
}
