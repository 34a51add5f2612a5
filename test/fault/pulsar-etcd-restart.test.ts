// Fault 6 (issue 6): the Pulsar standalone and etcd restart while traffic flows (private ones,
// so other test files on the shared engines are not disturbed). Publishes fail and are retried,
// consumers and the registry watch reconnect, edges keep or renew their leases, devices whose
// streams were closed reconnect and resume: nothing is lost, nothing shown twice. Sends whose
// publish reached Pulsar but whose answer was lost are retried by the clients and answered with
// their first id (the sender's idempotency key, history's dedup).
// Control: the same run with the sender keeping no idempotency keys (PARLEY_SENDER_IDEMPOTENCY=
// false): those retries, and the app's repeated sends, get new ids (I5).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import type { PrivateEngines } from "./support/private-engines.ts";
import { startPrivateEngines } from "./support/private-engines.ts";
import { faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, runScenario } from "./support/scenario.ts";
import { sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)("fault 6: Pulsar and etcd restart while traffic flows", () => {
  let engines: PrivateEngines | undefined;
  let mesh: FaultCluster | undefined;

  beforeAll(async () => {
    engines = await startPrivateEngines(["pulsar", "etcd"]);
    const { PARLEY_PULSAR_WEB_URL: pulsarWebUrl, PARLEY_ETCD_ENDPOINTS: etcd } = engines.env;
    if (pulsarWebUrl === undefined || etcd === undefined) {
      throw new Error("the private engines printed no PARLEY_PULSAR_WEB_URL or PARLEY_ETCD_ENDPOINTS");
    }
    mesh = await startFaultCluster({ engines: { pulsarWebUrl, etcdEndpoints: etcd.split(",") } });
  }, FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    try {
      await mesh?.stop();
    } finally {
      await engines?.close();
    }
  }, FAULT_HOOK_TIMEOUT_MS);

  const run = (label: string, seed: number, control: boolean) =>
    runScenario({
      mesh: mesh as FaultCluster,
      label,
      seed,
      control,
      quietTimeoutMs: 180_000,
      async fault({ recorder, random, traffic }) {
        const private_ = engines as PrivateEngines;
        await sleep(2_000 + random.int(2_000));
        recorder.note(`stopping Pulsar and etcd (${traffic.started} sends)`);
        await private_.stop(["pulsar", "etcd"]);
        recorder.note(`Pulsar and etcd stopped (${traffic.started} sends)`);
        await sleep(1_000 + random.int(2_000));
        await private_.start(["pulsar", "etcd"]);
        recorder.note(`Pulsar and etcd back (${traffic.started} sends)`);
        await sleep(5_000);
        return undefined;
      },
    });

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: nothing lost or shown twice across the restarts`,
      async () => {
        const { result, stats } = await run(`seed${seed}`, seed, false);
        expect(stats.unacked).toBe(0);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: a sender without idempotency keys answers the sends retried across the outage with new ids",
    async () => {
      const cluster = mesh as FaultCluster;
      await cluster.restart("sender", { PARLEY_SENDER_IDEMPOTENCY: "false" });
      try {
        const { result } = await run("control", 1, true);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toContain("I5");
      } finally {
        await cluster.restart("sender");
      }
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
