// One run of a fault scenario, the same shape for most of them: a fresh population on the
// cluster, its SDK clients connected, steady seeded traffic, the fault, the traffic stopped, the
// heal running while the system quiesces, the stored history read back, and the check.
import type { CheckResult } from "./checker.ts";
import type { FaultCluster } from "./fault-cluster.ts";
import type { Recorder } from "./history.ts";
import { createRecorder } from "./history.ts";
import type { Random } from "./random.ts";
import { createRandom } from "./random.ts";
import type {
  ClientSettings,
  FaultDevice,
  Population,
  PopulationSpec,
  Traffic,
  TrafficStats,
} from "./workload.ts";
import {
  attachClients,
  closeAll,
  connectAll,
  createPopulation,
  describeConversations,
  finishRun,
  reconnectSummary,
  recordStored,
  residue,
  startTraffic,
  waitForQuiescence,
} from "./workload.ts";

/**
 * 12 users (ten with two devices, 22 devices), six 1:1 conversations and a group of eleven: every
 * device is in the group and in one or two 1:1 conversations, with other devices of its own user.
 */
export const CHAT_POPULATION: Omit<PopulationSpec, "prefix"> = {
  users: 12,
  devicesOf: (i) => (i < 10 ? 2 : 1),
  direct: [
    [0, 1],
    [2, 3],
    [4, 5],
    [6, 7],
    [8, 9],
    [11, 0],
  ],
  groups: [{ owner: 10, members: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11] }],
};

export interface ScenarioRun {
  readonly recorder: Recorder;
  readonly random: Random;
  readonly population: Population;
  readonly devices: readonly FaultDevice[];
  readonly traffic: Traffic;
}

export interface ScenarioOptions {
  readonly mesh: FaultCluster;
  /** Also the user id prefix: unique per run on one cluster. */
  readonly label: string;
  readonly seed: number;
  /** A control run: its history is expected to break an invariant. */
  readonly control?: boolean;
  readonly population?: Omit<PopulationSpec, "prefix">;
  readonly clients?: Omit<ClientSettings, "recorder" | "random">;
  /** Sends per second over every sender. Default 3: far under what history stores on a busy 2-core box. */
  readonly ratePerSecond?: number;
  /** Who sends. Default: each user's first device. */
  readonly senders?: (devices: readonly FaultDevice[]) => FaultDevice[];
  /**
   * The fault, while traffic flows. Resolves when the traffic may stop, optionally with a heal that
   * runs while the system quiesces (e.g. restarting what was killed).
   */
  readonly fault: (run: ScenarioRun) => Promise<(() => Promise<unknown>) | undefined>;
  readonly quietTimeoutMs?: number;
}

export interface ScenarioResult {
  readonly result: CheckResult;
  readonly stats: TrafficStats;
  readonly run: ScenarioRun;
}

export async function runScenario(options: ScenarioOptions): Promise<ScenarioResult> {
  const { mesh, label } = options;
  const began = Date.now();
  const random = createRandom(options.seed);
  const recorder = createRecorder();
  const population = await createPopulation(mesh, {
    prefix: label,
    ...(options.population ?? CHAT_POPULATION),
  });
  describeConversations(recorder, population);
  const devices = attachClients(mesh, population.devices, { recorder, random, ...options.clients });
  try {
    await connectAll(devices);
    const setUpMs = Date.now() - began;
    const traffic = startTraffic({
      recorder,
      random: random.fork("traffic"),
      population,
      senders: options.senders?.(devices) ?? devices.filter((d) => d.device.deviceId === "d0"),
      ratePerSecond: options.ratePerSecond ?? 3,
    });
    const run: ScenarioRun = { recorder, random, population, devices, traffic };
    const heal = await options.fault(run);
    const stats = await traffic.stop();
    recorder.note(`traffic stopped: ${stats.acked} of ${stats.started} sends acknowledged`);
    const [quiet] = await Promise.all([
      waitForQuiescence(recorder, {
        timeoutMs: options.quietTimeoutMs ?? 180_000,
        // A control run's loss is final: no need to wait as long for it.
        stallMs: options.control === true ? 20_000 : 60_000,
      }),
      heal?.(),
    ]);
    await recordStored(recorder, population);
    const result = finishRun(
      recorder,
      label,
      {
        "set-up ms": setUpMs,
        sends: stats.started,
        "skipped turns": stats.skipped,
        "app retries": stats.appRetries,
        unacked: stats.unacked,
        "residue hidden by dedup": residue(devices),
        reconnects: reconnectSummary(devices),
        "quiet after ms": quiet.ms,
        "run ms": Date.now() - began,
      },
      { control: options.control === true },
    );
    return { result, stats, run };
  } finally {
    await closeAll(devices);
  }
}

/** Per run (set-up, traffic, fault, quiescence, check) on a loaded 2-core machine. */
export const FAULT_RUN_TIMEOUT_MS = 480_000;
/** Starting (or stopping) a fault cluster, private engines included. */
export const FAULT_HOOK_TIMEOUT_MS = 300_000;

/** The first of `names` to exit (a fault hook fired), or undefined after `timeoutMs`. */
export async function firstExit(
  mesh: FaultCluster,
  names: readonly string[],
  timeoutMs: number,
): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    return await Promise.race([...names.map((name) => mesh.exited(name).then(() => name)), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stops process `victim` from inside the app handler of one of `watched` (devices on it), while
 * that device displays a message it has not acknowledged yet: SIGKILL (`kill`) or SIGTERM
 * (`terminate`, an edge drains). That handler then goes on displaying for `holdMs`, so its
 * acknowledgement cannot overtake the stop. Stops after 20 s anyway if nothing arrives. Resolves
 * once the process is gone.
 */
export async function stopWhileDisplaying(
  mesh: FaultCluster,
  victim: string,
  watched: readonly FaultDevice[],
  how: "kill" | "terminate",
  holdMs = 0,
): Promise<void> {
  let stopped: Promise<void> | undefined;
  const stop = async () => {
    if (stopped !== undefined) return;
    stopped = how === "kill" ? mesh.killNow(victim) : mesh.terminateNow(victim);
    if (holdMs > 0) await new Promise((resolve) => setTimeout(resolve, holdMs));
  };
  const offs = watched.map((d) => d.client.onMessage(stop));
  const fallback = setTimeout(() => void stop(), 20_000);
  try {
    while (stopped === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
  } finally {
    clearTimeout(fallback);
    for (const off of offs) off();
  }
  await stopped;
}
