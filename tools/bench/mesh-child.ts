// The embedded mesh in its own process for the benchmarks, so its CPU and memory are measured
// apart from the load generator's. Data in a fresh temp folder, removed on stop. Driven over IPC
// by tools/bench/child.ts: answers "memory" (after a full GC when started with --expose-gc) and
// "rpc-calls" (its internal gRPC calls so far, by method: rpc-census.ts).
//
//   node tools/bench/mesh-child.ts [--heartbeat-ms N] [--queue-limit N] [--sqlite-synchronous normal]
//
// --sqlite-synchronous normal is an experiment, not a setting of Parley: it rewrites the
// `PRAGMA synchronous = FULL` every embedded store opens with (lib/sqlite.ts) to NORMAL, to
// measure what the per-commit fsync on the event loop costs the pipeline.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import { createLogger } from "../../lib/logging.ts";
import { startEmbeddedMesh } from "../mesh/embedded-mesh.ts";
import { memoryAfterGc, serveParent } from "./child.ts";
import { startRpcCensus } from "./rpc-census.ts";

const { values } = parseArgs({
  options: {
    "heartbeat-ms": { type: "string" },
    "queue-limit": { type: "string" },
    "sqlite-synchronous": { type: "string" },
  },
});

if (values["sqlite-synchronous"] !== undefined) {
  const level = values["sqlite-synchronous"].toUpperCase();
  if (!["FULL", "NORMAL", "OFF"].includes(level))
    throw new Error("--sqlite-synchronous: full, normal or off");
  const exec = DatabaseSync.prototype.exec;
  DatabaseSync.prototype.exec = function (this: DatabaseSync, sql: string) {
    // Only the level every store opens with: the commits that skip the fsync on purpose
    // (withoutWaitingForDisk) switch to NORMAL and back by number, and keep doing so.
    return exec.call(
      this,
      /^\s*PRAGMA synchronous\s*=\s*FULL\s*$/i.test(sql) ? `PRAGMA synchronous = ${level}` : sql,
    );
  };
}

const rpcCalls = startRpcCensus();
const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-mesh-"));
const mesh = await startEmbeddedMesh({
  dataDir,
  edgeHost: "127.0.0.1",
  edgePort: 0,
  logger: createLogger("bench-mesh", (process.env.PARLEY_LOG_LEVEL as "silent" | undefined) ?? "silent"),
  edge: {
    ...(values["heartbeat-ms"] === undefined ? {} : { heartbeatIntervalMs: Number(values["heartbeat-ms"]) }),
    ...(values["queue-limit"] === undefined ? {} : { streamQueueLimit: Number(values["queue-limit"]) }),
  },
});

serveParent(
  { memory: (command) => memoryAfterGc(command.heapSnapshot), "rpc-calls": () => rpcCalls() },
  async () => {
    try {
      await mesh.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  },
);
process.send?.({ type: "ready", edgeUrl: mesh.edgeUrl, pushAddress: mesh.edgePushAddress, dataDir });
