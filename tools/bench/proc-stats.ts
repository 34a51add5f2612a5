import { readFileSync } from "node:fs";
import { loadavg } from "node:os";

/** Linux clock ticks per second (USER_HZ): 100 on every mainstream kernel configuration. */
const TICKS_PER_SECOND = 100;

export interface ProcessSample {
  /** CPU time (user + system) in ms since the process started. */
  readonly cpuMs: number;
  /** Of which in the kernel (system time: socket reads and writes above all), ms. */
  readonly systemCpuMs: number;
  /** Resident set now, bytes. */
  readonly rssBytes: number;
  /** Peak resident set over the process's life (VmHWM), bytes. */
  readonly peakRssBytes: number;
}

/** One reading of /proc/<pid>: undefined once the process is gone. */
export function sampleProcess(pid: number): ProcessSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (name: string) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
    return {
      cpuMs: (ticks * 1000) / TICKS_PER_SECOND,
      systemCpuMs: (Number(fields[12]) * 1000) / TICKS_PER_SECOND,
      rssBytes: kb("VmRSS") * 1024,
      peakRssBytes: kb("VmHWM") * 1024,
    };
  } catch {
    return undefined;
  }
}

/** Busy and total jiffies of the whole machine (/proc/stat), to tell how loaded it was. */
function machineTicks(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((a, b) => a + b, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: total - idle, total };
}

export interface ProcessUsage {
  readonly name: string;
  readonly pid: number;
  /** CPU used over the window, in ms. */
  readonly cpuMs: number;
  /** Average CPU over the window, percent of one core. */
  readonly cpuPercent: number;
  /** Of which in the kernel, percent of one core. */
  readonly systemCpuPercent: number;
  /** Highest RSS sampled in the window, bytes. */
  readonly peakRssBytes: number;
  readonly rssAtEndBytes: number;
}

export interface MachineUsage {
  readonly cores: number;
  /** CPU busy on the whole machine over the window, percent of all cores. */
  readonly busyPercent: number;
  /** Of which by processes not in this benchmark (other engineers, engines), percent of all cores. */
  readonly othersPercent: number;
  readonly loadavgStart: readonly number[];
  readonly loadavgEnd: readonly number[];
}

export interface UsageReport {
  readonly durationMs: number;
  readonly processes: readonly ProcessUsage[];
  readonly machine: MachineUsage;
}

/**
 * Watches a set of processes (by name) over a window: CPU used, peak RSS (sampled every
 * `intervalMs`), and how busy the machine was meanwhile. `stop()` returns the report.
 */
export interface UsageWindow {
  stop(): UsageReport;
  /** Adds a process to watch from now on (a child started mid-window). */
  watch(name: string, pid: number): void;
}

export function watchUsage(processes: Record<string, number>, intervalMs = 250): UsageWindow {
  const startedAt = performance.now();
  const machineStart = machineTicks();
  const loadavgStart = loadavg();
  const watched = new Map<
    string,
    { pid: number; start: ProcessSample | undefined; peak: number; last: ProcessSample | undefined }
  >();
  const watch = (name: string, pid: number) => {
    const start = sampleProcess(pid);
    watched.set(name, { pid, start, peak: start?.rssBytes ?? 0, last: start });
  };
  for (const [name, pid] of Object.entries(processes)) watch(name, pid);
  const tick = () => {
    for (const entry of watched.values()) {
      const sample = sampleProcess(entry.pid);
      if (sample === undefined) continue;
      entry.last = sample;
      entry.peak = Math.max(entry.peak, sample.rssBytes);
    }
  };
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  return {
    watch,
    stop() {
      clearInterval(timer);
      tick();
      const durationMs = performance.now() - startedAt;
      const machineEnd = machineTicks();
      const report: ProcessUsage[] = [];
      let oursTicks = 0;
      for (const [name, entry] of watched) {
        const cpuMs = (entry.last?.cpuMs ?? 0) - (entry.start?.cpuMs ?? 0);
        const systemCpuMs = (entry.last?.systemCpuMs ?? 0) - (entry.start?.systemCpuMs ?? 0);
        oursTicks += (cpuMs / 1000) * TICKS_PER_SECOND;
        report.push({
          name,
          pid: entry.pid,
          cpuMs,
          cpuPercent: durationMs > 0 ? (100 * cpuMs) / durationMs : 0,
          systemCpuPercent: durationMs > 0 ? (100 * systemCpuMs) / durationMs : 0,
          peakRssBytes: entry.peak,
          rssAtEndBytes: entry.last?.rssBytes ?? 0,
        });
      }
      const total = machineEnd.total - machineStart.total;
      const busy = machineEnd.busy - machineStart.busy;
      const cores = Math.max(1, total / ((durationMs / 1000) * TICKS_PER_SECOND));
      return {
        durationMs,
        processes: report,
        machine: {
          cores: Math.round(cores),
          busyPercent: total > 0 ? (100 * busy) / total : 0,
          othersPercent: total > 0 ? Math.max(0, (100 * (busy - oursTicks)) / total) : 0,
          loadavgStart,
          loadavgEnd: loadavg(),
        },
      };
    },
  };
}
