// Starting, finding and stopping the engine processes this tool owns, by PID only.
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";

export interface OwnedProcess {
  readonly pid: number;
}

/**
 * The process recorded in `pidFile`, if it is still alive and still ours: its command line or its
 * working directory must name `marker` (the engine's state folder; Redis rewrites its command
 * line, so the working directory it was started in tells), so a PID reused by an unrelated
 * process after a reboot is never signalled.
 */
export function findOwnedProcess(pidFile: string, marker: string): OwnedProcess | undefined {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  try {
    const commandLine = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
    const workingDir = readlinkSync(`/proc/${pid}/cwd`);
    if (!commandLine.includes(marker) && !`${workingDir}/`.startsWith(`${marker}/`)) return undefined;
    const state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
    return state === "Z" ? undefined : { pid };
  } catch {
    return undefined;
  }
}

/** Starts `command` in its own session (it outlives this CLI), output to `logFile`, PID to `pidFile`. */
export function startDetached(options: {
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd: string;
  readonly logFile: string;
  readonly pidFile: string;
  readonly env?: NodeJS.ProcessEnv;
}): OwnedProcess {
  const log = openSync(options.logFile, "a");
  try {
    const child = spawn(options.command, options.args, {
      cwd: options.cwd,
      detached: true,
      stdio: ["ignore", log, log],
      env: options.env ?? process.env,
    });
    if (child.pid === undefined) throw new Error(`could not start ${options.command}`);
    child.unref();
    writeFileSync(options.pidFile, `${child.pid}\n`);
    return { pid: child.pid };
  } finally {
    closeSync(log);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopOwnedProcess(
  pidFile: string,
  marker: string,
  graceMs: number,
): Promise<"stopped" | "killed" | "not_running"> {
  const owned = findOwnedProcess(pidFile, marker);
  if (!owned) {
    rmSync(pidFile, { force: true });
    return "not_running";
  }
  process.kill(owned.pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!findOwnedProcess(pidFile, marker)) {
      rmSync(pidFile, { force: true });
      return "stopped";
    }
    await sleep(200);
  }
  process.kill(owned.pid, "SIGKILL");
  while (findOwnedProcess(pidFile, marker)) await sleep(100);
  rmSync(pidFile, { force: true });
  return "killed";
}

/** Whether something already listens on 127.0.0.1:`port` (or it cannot be bound). */
export function portTaken(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(true));
    server.listen({ host: "127.0.0.1", port, exclusive: true }, () => server.close(() => resolve(false)));
  });
}

/** Resolves once 127.0.0.1:`port` accepts a TCP connection. */
export function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(1_000);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Polls `probe` until it returns true, the process dies (then the log's tail explains why) or
 * `timeoutMs` passes.
 */
export async function waitUntilReady(options: {
  readonly name: string;
  readonly probe: () => Promise<boolean>;
  readonly alive: () => boolean;
  readonly logFile: string;
  readonly timeoutMs: number;
}): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  while (Date.now() < deadline) {
    if (await options.probe().catch(() => false)) return;
    if (!options.alive()) {
      throw new Error(
        `${options.name} exited while starting; last lines of ${options.logFile}:\n${tail(options.logFile, 15)}`,
      );
    }
    await sleep(500);
  }
  throw new Error(
    `${options.name} was not ready after ${options.timeoutMs / 1000} s; last lines of ${options.logFile}:\n${tail(options.logFile, 15)}`,
  );
}

export function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Resident memory of a process in MiB (VmRSS), or undefined. */
export function residentMiB(pid: number): number | undefined {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Math.round(Number(match[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
