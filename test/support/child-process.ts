import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { resolve } from "node:path";

export const repoRoot = resolve(import.meta.dirname, "../..");

/** A process of the mesh started by a test, with everything it printed so far. */
export interface MeshProcess {
  readonly child: ChildProcessWithoutNullStreams;
  output(): string;
  /** Resolves with the first match of `pattern` in the output, waiting up to `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal name). */
  exited(): Promise<number | string>;
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  stop(graceMs?: number): Promise<number | string>;
}

/**
 * Starts `node <script>` from the repository root on the same Node as the tests (Node 24). Its
 * Prometheus endpoint is off (PARLEY_METRICS_PORT=0) unless `env` asks for one: a fixed default
 * port would collide between test runs on one machine.
 */
export function startNodeProcess(script: string, env: Record<string, string> = {}): MeshProcess {
  const child = spawn(process.execPath, [script], {
    cwd: repoRoot,
    env: { ...process.env, PARLEY_METRICS_PORT: "0", ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let output = "";
  const listeners = new Set<() => void>();
  const append = (chunk: Buffer) => {
    output += chunk.toString("utf8");
    for (const listener of listeners) listener();
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  const exit = new Promise<number | string>((resolveExit) => {
    child.once("exit", (code, signal) => resolveExit(code ?? signal ?? "unknown"));
  });

  return {
    child,
    output: () => output,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolveMatch, reject) => {
        const check = () => {
          const match = output.match(pattern);
          if (match) {
            done();
            resolveMatch(match);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${script} did not print ${pattern} within ${timeoutMs} ms; output:\n${output}`));
        }, timeoutMs);
        const onExit = () => {
          done();
          reject(new Error(`${script} exited before printing ${pattern}; output:\n${output}`));
        };
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
          child.off("exit", onExit);
        };
        listeners.add(check);
        child.once("exit", onExit);
        check();
      });
    },
    exited: () => exit,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return exit;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
  };
}
