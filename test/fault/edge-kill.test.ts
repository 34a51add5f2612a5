// Fault 1 (issue 6): an edge host is SIGKILLed with streams open and messages in flight. Its
// devices reconnect elsewhere by themselves (Locate through the front door, full-jitter backoff),
// resume from their cursors and lose nothing; what the replay repeats, the SDK's dedup hides.
// Control: the same run with the SDK's dedup off must show duplicates (I2).
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
import { sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)("fault 1: SIGKILL an edge host with streams open and messages in flight", () => {
  let mesh: FaultCluster;

  beforeAll(async () => {
    // A killed host's routes outlive it by its lease: shorter than the default, so its devices'
    // Locate stops naming it sooner.
    mesh = await startFaultCluster({ leaseTtlMs: 5_000 });
  }, FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  const run = (label: string, seed: number, dedup: boolean) =>
    runScenario({
      mesh,
      label,
      seed,
      control: !dedup,
      clients: { dedup },
      async fault({ recorder, random, traffic, devices }) {
        await sleep(2_000 + random.int(2_000));
        const index = random.int(mesh.edgeUrls.length);
        const victim = `edge-${index + 1}`;
        // The kill lands while a message is in flight: from inside the app handler of a device on
        // the victim, before that device can acknowledge what it is displaying.
        const watched = devices.filter((d) => d.edgeUrl === mesh.edgeUrls[index]);
        await stopWhileDisplaying(mesh, victim, watched, "kill");
        recorder.note(
          `SIGKILL ${victim}, which held ${watched.length} devices' streams, while one displayed a message (${traffic.started} sends)`,
        );
        // Traffic goes on while its devices find the other host.
        await sleep(6_000);
        return () => mesh.restart(victim);
      },
    });

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: its devices move to the other edge; nothing lost or shown twice, order and ids kept`,
      async () => {
        const { result, stats } = await run(`seed${seed}`, seed, true);
        expect(stats.unacked).toBe(0);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: with the SDK's dedup off, the replays after the kill are shown twice",
    async () => {
      const { result } = await run("control", 1, false);
      expect(result.violations).not.toEqual([]);
      expect(violatedInvariants(result.violations)).toContain("I2");
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
