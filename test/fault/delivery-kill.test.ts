// Fault 2 (issue 6): a delivery worker is SIGKILLed in the middle of a 1,000-member fan-out (a
// hook fires right after its first batch of the message was pushed and checkpointed, before the
// event is acknowledged). The broker hands the event to the other worker, whose checkpoint lookup
// skips the batch already pushed; the edge drops any repeat of a batch it took, the SDK any repeat
// of a message: every member's device shows the message once, nothing is missing.
// Control: the same run with checkpoints written before the push instead of after
// (PARLEY_DELIVERY_FAULT_CHECKPOINT_BEFORE_PUSH=true): the batch marked done when the worker dies
// was never pushed, so its devices never get the message (I1).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import type { Recorder } from "./support/history.ts";
import { createRecorder } from "./support/history.ts";
import { createRandom, faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, firstExit } from "./support/scenario.ts";
import type { FaultDevice, Population } from "./support/workload.ts";
import {
  attachClients,
  closeAll,
  connectAll,
  createPopulation,
  describeConversations,
  finishRun,
  reconnectSummary,
  recordStored,
  resetReconnects,
  residue,
  sendInit,
  sendUntilAcknowledged,
  waitForQuiescence,
} from "./support/workload.ts";

const targets = engineTargets();
/** Members of the group, one device each (PARLEY_FAULT_FANOUT_MEMBERS, default 1,000: the limit). */
const MEMBERS = Number(process.env.PARLEY_FAULT_FANOUT_MEMBERS ?? 1_000);
const WORKERS = ["delivery-1", "delivery-2"];
const CONTROL_ENV = { PARLEY_DELIVERY_FAULT_CHECKPOINT_BEFORE_PUSH: "true" };

describe.runIf(targets)(`fault 2: SIGKILL a delivery worker mid ${MEMBERS}-member fan-out`, () => {
  let mesh: FaultCluster;
  let population: Population;
  let devices: FaultDevice[] = [];
  let recorder: Recorder = createRecorder();
  let setUpMs = 0;

  beforeAll(async () => {
    const began = Date.now();
    mesh = await startFaultCluster({ hooks: ["delivery"], connectionsPerUrl: 8 });
    population = await createPopulation(mesh, {
      prefix: "fan",
      users: MEMBERS,
      groups: [{ owner: 0, members: Array.from({ length: MEMBERS - 1 }, (_, i) => i + 1) }],
      concurrency: 32,
    });
    // One set of connected clients serves every run; each run records into its own history.
    devices = attachClients(mesh, population.devices, {
      recorder: () => recorder,
      random: createRandom(0),
    });
    await connectAll(devices, 64);
    setUpMs = Date.now() - began;
    console.info(`[fault] fault 2 set-up: ${MEMBERS} members connected in ${setUpMs} ms`);
  }, 3 * FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await closeAll(devices);
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  async function run(label: string, seed: number, control: boolean) {
    const began = Date.now();
    const random = createRandom(seed);
    recorder = createRecorder();
    resetReconnects(devices);
    describeConversations(recorder, population);
    const group = population.conversations[0];
    if (group === undefined) throw new Error("no group");
    const send = async (text: string) => {
      const sender = random.pick(devices);
      const outcome = await sendUntilAcknowledged(recorder, sender, group, sendInit(sender, group, text));
      if (!outcome.acked) throw new Error(`${text} was never acknowledged`);
    };
    // A message reaches everyone first, so every device is current when the fault comes.
    await send(`${label} warm-up`);
    const warm = await waitForQuiescence(recorder, { timeoutMs: 240_000 });
    recorder.note(`warm-up shown by every device in ${warm.ms} ms`);
    mesh.arm("delivery");
    await send(`${label} interrupted fan-out`);
    const victim = await firstExit(mesh, WORKERS, 120_000);
    if (victim === undefined) throw new Error("no delivery worker's hook fired within 120 s");
    recorder.note(`${victim} SIGKILLed itself after pushing its first batch of the message`);
    const [quiet] = await Promise.all([
      waitForQuiescence(recorder, { timeoutMs: 240_000, stallMs: control ? 20_000 : 60_000 }),
      mesh.restart(victim, control ? CONTROL_ENV : {}),
    ]);
    await recordStored(recorder, population);
    return finishRun(
      recorder,
      `fault 2 ${label}`,
      {
        members: MEMBERS,
        "residue hidden by dedup": residue(devices),
        reconnects: reconnectSummary(devices),
        "quiet after ms": quiet.ms,
        "run ms": Date.now() - began,
      },
      { control },
    );
  }

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: every member shows the interrupted message once; nothing missing`,
      async () => {
        const result = await run(`seed${seed}`, seed, false);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: checkpoints written before the push leave the killed worker's batch undelivered",
    async () => {
      await Promise.all(WORKERS.map((worker) => mesh.restart(worker, CONTROL_ENV)));
      try {
        const result = await run("control", 1, true);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toContain("I1");
      } finally {
        mesh.disarm("delivery");
        await Promise.all(WORKERS.map((worker) => mesh.restart(worker)));
      }
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
