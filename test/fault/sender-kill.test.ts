// Fault 3 (issue 6): the sender is SIGKILLed after the broker accepted a message and before it
// answered (a hook fires right after a confirmed publish). The client's retry, with the same
// client_message_id, must yield one message under the first id: the id was reserved in Redis
// before the publish, and history stores a message once.
// Control: the same run with the sender's idempotency keys off (PARLEY_SENDER_IDEMPOTENCY=false)
// must answer a retry with a new id (I5).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import { faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, firstExit, runScenario } from "./support/scenario.ts";
import { sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)("fault 3: SIGKILL the sender after the broker accepted, before it answered", () => {
  let mesh: FaultCluster;

  beforeAll(async () => {
    mesh = await startFaultCluster({ hooks: ["sender"] });
  }, FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  const run = (label: string, seed: number, idempotency: boolean) => {
    const env = idempotency ? {} : { PARLEY_SENDER_IDEMPOTENCY: "false" };
    return runScenario({
      mesh,
      label,
      seed,
      control: !idempotency,
      async fault({ recorder, random, traffic }) {
        await sleep(2_000 + random.int(2_000));
        mesh.arm("sender");
        recorder.note(`sender armed (${traffic.started} sends started)`);
        const died = await firstExit(mesh, ["sender"], 60_000);
        if (died === undefined) throw new Error("the sender's hook did not fire within 60 s");
        recorder.note(`sender SIGKILLed itself after a confirmed publish (${traffic.started} sends started)`);
        // Every send in flight fails over to the client's retries until the sender is back.
        await sleep(1_000 + random.int(2_000));
        await mesh.restart("sender", env);
        recorder.note("sender restarted");
        await sleep(3_000);
        return undefined;
      },
    });
  };

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: the interrupted send and every retry carry one id; one stored copy; nothing lost`,
      async () => {
        const { result, stats } = await run(`seed${seed}`, seed, true);
        expect(stats.unacked).toBe(0);
        expect(describeViolations(result.violations)).toBe("no violations");
        // The send interrupted by the kill: its retry found the id reserved before the publish.
        expect(result.summary.answeredAsRetry).toBeGreaterThanOrEqual(1);
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: without idempotency keys a retried send is answered with a new id",
    async () => {
      await mesh.restart("sender", { PARLEY_SENDER_IDEMPOTENCY: "false" });
      try {
        const { result } = await run("control", 1, false);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toContain("I5");
      } finally {
        await mesh.restart("sender");
      }
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
