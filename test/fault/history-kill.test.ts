// Fault 4 (issue 6): history is SIGKILLed after it stored a message (seq taken, inbox rows and
// outbox written) and before it acknowledged the broker (a hook fires right there). The broker
// delivers the message again to the restarted history, which must find the first copy: no second
// seq, nothing lost, displays in seq order.
// Control: the same run with history acknowledging on arrival and storing afterwards
// (PARLEY_HISTORY_FAULT_ACK_BEFORE_STORE=true): the message in hand when it dies is lost (I1).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import { faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, firstExit, runScenario } from "./support/scenario.ts";
import { sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)("fault 4: SIGKILL the history consumer before it acknowledged the broker", () => {
  let mesh: FaultCluster;

  beforeAll(async () => {
    mesh = await startFaultCluster({ hooks: ["history"] });
  }, FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  const run = (label: string, seed: number, ackFirst: boolean) => {
    const env = ackFirst ? { PARLEY_HISTORY_FAULT_ACK_BEFORE_STORE: "true" } : {};
    return runScenario({
      mesh,
      label,
      seed,
      control: ackFirst,
      async fault({ recorder, random, traffic }) {
        await sleep(2_000 + random.int(2_000));
        mesh.arm("history");
        recorder.note(`history armed (${traffic.started} sends started)`);
        const died = await firstExit(mesh, ["history"], 60_000);
        if (died === undefined) throw new Error("history's hook did not fire within 60 s");
        recorder.note(`history SIGKILLed itself before acknowledging (${traffic.started} sends started)`);
        // Sends go on (the sender only needs the broker); storing waits for the restart.
        await sleep(1_000 + random.int(2_000));
        await mesh.restart("history", env);
        recorder.note("history restarted");
        await sleep(3_000);
        return undefined;
      },
    });
  };

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: the redelivered message keeps its one seq; nothing lost or shown twice`,
      async () => {
        const { result, stats } = await run(`seed${seed}`, seed, false);
        expect(stats.unacked).toBe(0);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: a history that acknowledges before storing loses the message it dies with",
    async () => {
      await mesh.restart("history", { PARLEY_HISTORY_FAULT_ACK_BEFORE_STORE: "true" });
      try {
        const { result } = await run("control", 1, true);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toContain("I1");
      } finally {
        await mesh.restart("history");
      }
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
