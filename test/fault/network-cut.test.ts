// Fault 8 (issue 6): one device's network is cut while messages arrive: a relay the test controls
// sits between the device and the cluster and black-holes its traffic (bytes vanish, nobody is
// told, as in a partition), first only what the device sends (its acknowledgements are lost while
// it still displays what arrives), then everything; the partition heals and the relay resets the
// dead connections.
// The edge closes the silent stream (3 heartbeats), the SDK gives up on it the same way, and once
// the network is back the device resumes from its cursor: nothing the edge pushed into the void is
// lost, and what it had displayed but could not acknowledge is not shown twice.
// Control: the same run with the SDK's dedup off shows the replay twice (I2).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import type { TestDevice } from "../support/mesh-users.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import { createRandom, faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, runScenario } from "./support/scenario.ts";
import { createDeviceNetwork, sleep } from "./support/workload.ts";

const targets = engineTargets();
const HEARTBEAT_MS = 2_000;

describe.runIf(targets)("fault 8: a device's network is cut while messages arrive", () => {
  let mesh: FaultCluster;

  beforeAll(async () => {
    // A short heartbeat, so both ends notice the silent stream within seconds.
    mesh = await startFaultCluster({ heartbeatIntervalMs: HEARTBEAT_MS });
  }, FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  const run = async (label: string, seed: number, dedup: boolean) => {
    const network = await createDeviceNetwork(mesh);
    // The victim: any device, a sender or not (users 0-9 have d0 and d1, users 10 and 11 only d0).
    const pick = createRandom(seed).fork("victim");
    const user = pick.int(12);
    const victim = { userId: `${label}-u${user}`, deviceId: user < 10 ? pick.pick(["d0", "d1"]) : "d0" };
    const isVictim = (d: TestDevice) => d.userId === victim.userId && d.deviceId === victim.deviceId;
    try {
      return await runScenario({
        mesh,
        label,
        seed,
        control: !dedup,
        // More traffic than elsewhere: messages must be on their way when the cut comes.
        ratePerSecond: 5,
        clients: { dedup, network: (d) => (isVictim(d) ? network : undefined) },
        async fault({ recorder, random, traffic }) {
          const who = `${victim.userId}/${victim.deviceId}`;
          await sleep(2_000 + random.int(2_000));
          // The partition starts half-open: messages still reach the device and are displayed,
          // its acknowledgements (and sends, heartbeats) vanish. Then nothing gets through.
          network.mute();
          recorder.note(`${who}'s outgoing traffic black-holed (${traffic.started} sends)`);
          await sleep(HEARTBEAT_MS + random.int(HEARTBEAT_MS));
          network.blackhole();
          recorder.note(`${who}'s network black-holed (${traffic.started} sends)`);
          await sleep(3 * HEARTBEAT_MS + 2_000 + random.int(3_000));
          network.heal();
          recorder.note(`network healed (${traffic.started} sends)`);
          await sleep(3_000);
          return undefined;
        },
      });
    } finally {
      await network.close();
    }
  };

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: the cut device gets everything once, in order, after the network returns`,
      async () => {
        const { result, stats } = await run(`seed${seed}`, seed, true);
        expect(stats.unacked).toBe(0);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: with the SDK's dedup off, what the cut device displayed but could not acknowledge shows twice",
    async () => {
      const { result } = await run("control", 1, false);
      expect(result.violations).not.toEqual([]);
      expect(violatedInvariants(result.violations)).toContain("I2");
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
