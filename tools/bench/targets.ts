import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { BenchChild } from "./child.ts";
import { startChild } from "./child.ts";
import type { BenchOptions, TargetName } from "./options.ts";

/** What a scenario runs against: a baseline server, or Parley (embedded child or a cluster). */
export interface Target {
  readonly name: TargetName;
  /** Where devices connect (several edges of a cluster: spread round-robin). */
  readonly urls: readonly string[];
  /** Parley: the EdgePushService to push to (push scenario). */
  readonly pushAddress: string | undefined;
  /** Parley: whose dev issuer signs the tokens. */
  readonly dataDir: string | undefined;
  /** The child process under test (embedded profile and baselines); undefined for a cluster. */
  readonly child: BenchChild | undefined;
  /** Processes to measure, name -> pid. */
  readonly pids: Readonly<Record<string, number>>;
  /**
   * Memory of the process under test after a full GC (undefined for a cluster); with
   * `heapSnapshot`, a heap snapshot of it is written to that path too.
   */
  memory(heapSnapshot?: string): Promise<Record<string, number> | undefined>;
  /** The embedded mesh's internal gRPC calls so far, by method (undefined for other targets). */
  rpcCalls(): Promise<Record<string, number> | undefined>;
  stop(): Promise<void>;
}

export async function startTarget(name: TargetName, options: BenchOptions): Promise<Target> {
  if (name === "parley" && options.profile === "cluster") {
    return {
      name,
      urls: options.edgeUrls,
      pushAddress: options.pushAddress,
      dataDir: options.dataDir,
      child: undefined,
      pids: options.pids,
      memory: async () => undefined,
      rpcCalls: async () => undefined,
      stop: async () => {},
    };
  }
  const nodeFlags = ["--expose-gc"];
  if (name === "parley" && options.maxOldSpaceMb !== undefined) {
    nodeFlags.push(`--max-old-space-size=${options.maxOldSpaceMb}`);
  }
  if (options.cpuProf) {
    const dir = join(options.outDir, "profiles");
    mkdirSync(dir, { recursive: true });
    nodeFlags.push(
      "--cpu-prof",
      `--cpu-prof-dir=${dir}`,
      `--cpu-prof-name=${options.scenario}-${name}-${Date.now()}.cpuprofile`,
    );
  }
  const child =
    name === "parley"
      ? startChild(
          "mesh",
          "tools/bench/mesh-child.ts",
          [
            ...(options.heartbeatMs === undefined ? [] : ["--heartbeat-ms", String(options.heartbeatMs)]),
            ...(options.sqliteSynchronous === undefined
              ? []
              : ["--sqlite-synchronous", options.sqliteSynchronous]),
          ],
          {
            nodeFlags,
            ...(options.meshLog === undefined
              ? {}
              : {
                  logFile: options.meshLog,
                  env: { PARLEY_LOG_LEVEL: process.env.PARLEY_LOG_LEVEL ?? "warn" },
                }),
          },
        )
      : startChild(name, "tools/bench/baseline-child.ts", [name], { nodeFlags });
  let ready: Record<string, unknown>;
  try {
    ready = await child.ready;
  } catch (err) {
    await child.stop(1000);
    throw err;
  }
  if (name !== "parley") await child.request({ type: "configure", payloadBytes: options.payloadBytes });
  const url = String(name === "parley" ? ready.edgeUrl : ready.url);
  return {
    name,
    urls: [url],
    pushAddress: name === "parley" ? String(ready.pushAddress) : undefined,
    dataDir: name === "parley" ? String(ready.dataDir) : undefined,
    child,
    pids: { [name === "parley" ? "mesh" : name]: child.pid },
    memory: (heapSnapshot) =>
      child.request<Record<string, number>>(
        { type: "memory", ...(heapSnapshot === undefined ? {} : { heapSnapshot }) },
        // Writing a snapshot of a heap of a GB takes minutes.
        heapSnapshot === undefined ? 60_000 : 900_000,
      ),
    rpcCalls: async () =>
      name === "parley" ? child.request<Record<string, number>>({ type: "rpc-calls" }, 60_000) : undefined,
    // A profile is written at exit, after every stream closed: 100K take more than the default grace.
    stop: () => child.stop(options.cpuProf ? 300_000 : undefined),
  };
}
