import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { resolve } from "node:path";
import { writeHeapSnapshot } from "node:v8";

export const repoRoot = resolve(import.meta.dirname, "../..");

/** A process under test (the mesh, a baseline server), driven over Node's IPC channel. */
export interface BenchChild {
  readonly name: string;
  readonly pid: number;
  /** The child's first message: where it listens. */
  readonly ready: Promise<Record<string, unknown>>;
  /** Sends a command and resolves with the child's answer (rejects with its error). */
  request<T = Record<string, unknown>>(command: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  /** Asks the child to stop, then kills it if it has not exited within `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** stdout + stderr so far (for errors). */
  output(): string;
}

/**
 * Starts `node <script> <args>` from the repository root with an IPC channel. The file-descriptor
 * limit is raised to `fdLimit` (bounded by the hard limit) by a shell wrapper that then execs node,
 * so the pid we watch is node's own.
 */
export function startChild(
  name: string,
  script: string,
  args: readonly string[],
  options: {
    fdLimit?: number;
    nodeFlags?: readonly string[];
    env?: Record<string, string>;
    /** Also appends the child's stdout and stderr to this file. */
    logFile?: string;
  } = {},
): BenchChild {
  const fdLimit = options.fdLimit ?? 20_000;
  const child: ChildProcess = spawn(
    "/bin/sh",
    [
      "-c",
      `ulimit -n ${fdLimit} 2>/dev/null || ulimit -n $(ulimit -Hn); exec "$0" "$@"`,
      process.execPath,
      ...(options.nodeFlags ?? []),
      resolve(repoRoot, script),
      ...args,
    ],
    {
      cwd: repoRoot,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe", "ipc"],
    },
  );
  let output = "";
  const log = options.logFile === undefined ? undefined : createWriteStream(options.logFile, { flags: "a" });
  if (log !== undefined) child.once("exit", () => log.end());
  const append = (chunk: Buffer) => {
    log?.write(chunk);
    output += chunk.toString("utf8");
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout?.on("data", append);
  child.stderr?.on("data", append);
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  const pending = new Map<number, { resolve: (v: never) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let onReady: ((m: Record<string, unknown>) => void) | undefined;
  let onFail: ((e: Error) => void) | undefined;
  const ready = new Promise<Record<string, unknown>>((res, rej) => {
    onReady = res;
    onFail = rej;
  });
  child.on("message", (raw) => {
    const message = raw as { type?: string; id?: number; result?: unknown; error?: string };
    if (message.type === "ready") {
      onReady?.(message as Record<string, unknown>);
      return;
    }
    if (message.id === undefined) return;
    const waiter = pending.get(message.id);
    if (waiter === undefined) return;
    pending.delete(message.id);
    if (message.error !== undefined) waiter.reject(new Error(`${name}: ${message.error}`));
    else waiter.resolve(message.result as never);
  });
  child.once("exit", (code, signal) => {
    const error = new Error(`${name} exited (${code ?? signal}); output:\n${output.slice(-4000)}`);
    onFail?.(error);
    for (const waiter of pending.values()) waiter.reject(error);
    pending.clear();
  });
  if (child.pid === undefined) throw new Error(`${name}: could not start ${script}`);
  const pid = child.pid;
  return {
    name,
    pid,
    ready,
    request<T>(command: Record<string, unknown>, timeoutMs = 600_000) {
      const id = nextId++;
      return new Promise<T>((res, rej) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          rej(new Error(`${name}: no answer to ${String(command.type)} within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, {
          resolve: (v: never) => {
            clearTimeout(timer);
            res(v as T);
          },
          reject: (e) => {
            clearTimeout(timer);
            rej(e);
          },
        });
        child.send({ ...command, id });
      });
    },
    async stop(graceMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.connected) child.send({ type: "stop", id: 0 });
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
    output: () => output,
  };
}

/** Child side: answers the parent's commands with `handlers`; "stop" runs `onStop` then exits. */
export function serveParent(
  handlers: Record<string, (command: Record<string, unknown>) => unknown>,
  onStop: () => Promise<void>,
): void {
  const send = (message: unknown) => process.send?.(message);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await onStop();
    } finally {
      process.exit(0);
    }
  };
  process.on("message", (raw) => {
    const command = raw as Record<string, unknown> & { type: string; id: number };
    if (command.type === "stop") {
      void stop();
      return;
    }
    const handler = handlers[command.type];
    if (handler === undefined) {
      send({ id: command.id, error: `unknown command ${command.type}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(command))
      .then(
        (result) => send({ id: command.id, result: result ?? {} }),
        (err: unknown) => send({ id: command.id, error: err instanceof Error ? err.stack : String(err) }),
      );
  });
  // The parent is gone (crashed, killed): do not linger holding ports and memory.
  process.on("disconnect", () => void stop());
  process.on("SIGTERM", () => void stop());
}

/**
 * The memory figures a child reports, after a full GC when it runs with --expose-gc. With
 * `heapSnapshot` (a file path, the parent's `memory` command's field) it also writes a heap
 * snapshot there, after the figures are read so the snapshot's own allocations are not in them.
 */
export function memoryAfterGc(heapSnapshot?: unknown): Record<string, number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  if (typeof heapSnapshot === "string") writeHeapSnapshot(heapSnapshot);
  return {
    rss: m.rss,
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
    arrayBuffers: m.arrayBuffers,
  };
}
