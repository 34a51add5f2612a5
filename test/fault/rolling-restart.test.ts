// Rolling restart (issue 6, cluster profile): each edge in turn is stopped with SIGTERM while
// messages flow, as a deployment rolls. The stopping edge sends each of its devices a Drain frame
// naming the other host and a resume cursor, then closes; the devices move without a reconnect
// delay, and the edge comes back before the next one goes. The signal lands while a device of the
// stopping edge displays a message it has not acknowledged yet: the new host's replay starts at
// the oldest unacknowledged message (a cursor may lie past a message never received), so that one
// comes again, and the run asserts it did and that the SDK hid it. (A device that acknowledged
// everything before the drain ended gets nothing twice: most devices, in the runs measured.)
// Control: the same roll with neither protection, SIGKILL instead of the drain and the SDK's dedup
// off, must show replays (I2). Dedup off alone does not reliably: the replay of the message being
// displayed joins that display in the SDK's pipeline instead of being shown again.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import { faultSeeds } from "./support/random.ts";
import {
  FAULT_HOOK_TIMEOUT_MS,
  FAULT_RUN_TIMEOUT_MS,
  runScenario,
  stopWhileDisplaying,
} from "./support/scenario.ts";
import { residue, sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)(
  "rolling restart: each edge drains (SIGTERM) and comes back while traffic flows",
  () => {
    let mesh: FaultCluster;

    beforeAll(async () => {
      mesh = await startFaultCluster({ leaseTtlMs: 5_000 });
    }, FAULT_HOOK_TIMEOUT_MS);

    afterAll(async () => {
      await mesh?.stop();
    }, FAULT_HOOK_TIMEOUT_MS);

    const run = (label: string, seed: number, protectedRoll: boolean) =>
      runScenario({
        mesh,
        label,
        seed,
        control: !protectedRoll,
        clients: { dedup: protectedRoll },
        async fault({ recorder, random, traffic, devices }) {
          const order = random.int(2) === 0 ? [0, 1] : [1, 0];
          for (const index of order) {
            await sleep(2_000 + random.int(2_000));
            const victim = `edge-${index + 1}`;
            // The signal lands while a message is in flight: from inside the app handler of a
            // device on the victim, which goes on displaying it for 3 s, past the drain's 2 s
            // deadline. Its acknowledgement can only follow the device to the new host, which by
            // then has replayed the message from the oldest unacknowledged one.
            const watched = devices.filter((d) => d.edgeUrl === mesh.edgeUrls[index]);
            if (protectedRoll) await stopWhileDisplaying(mesh, victim, watched, "terminate", 3_000);
            else await stopWhileDisplaying(mesh, victim, watched, "kill");
            recorder.note(
              `${protectedRoll ? "SIGTERM (drain)" : "SIGKILL"} ${victim}, which held ${watched.length} devices' streams, while one displayed a message (${traffic.started} sends)`,
            );
            // Its devices move while traffic goes on; then it comes back, as a rolled pod would.
            await sleep(3_000 + random.int(2_000));
            await mesh.restart(victim);
            recorder.note(`${victim} back`);
          }
          await sleep(3_000);
          return undefined;
        },
      });

    for (const seed of faultSeeds()) {
      it(
        `seed ${seed}: every device moves on Drain; nothing lost or shown twice, order and ids kept`,
        async () => {
          const { result, stats, run: scenario } = await run(`seed${seed}`, seed, true);
          expect(stats.unacked).toBe(0);
          expect(describeViolations(result.violations)).toBe("no violations");
          // The message displayed across each drain came again, and the SDK's dedup hid it.
          expect(residue(scenario.devices)).toBeGreaterThanOrEqual(1);
        },
        FAULT_RUN_TIMEOUT_MS,
      );
    }

    it(
      "control: SIGKILL instead of the drain and the SDK's dedup off: replays are shown twice",
      async () => {
        const { result } = await run("control", 1, false);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toContain("I2");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  },
);
