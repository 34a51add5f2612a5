// Fault 5 (issue 6): Redis restarts empty while traffic flows (a private Redis, so other test
// files on the shared engines are not disturbed): presence, fan-out checkpoints, idempotency keys
// and rate-limit buckets are lost. Sends in flight fail over to retries; delivery events whose
// checkpoint could not be read come again; at worst duplicates, hidden by dedup, never a loss.
// One exception, reported rather than failed: I5 (see the seed test).
// Control: the same run with the sender keeping no idempotency keys at all
// (PARLEY_SENDER_IDEMPOTENCY=false), Redis's loss made permanent: repeated sends get new ids (I5),
// while history's own dedup by client_message_id still stores each send once.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import type { Violation } from "./support/checker.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import type { PrivateEngines } from "./support/private-engines.ts";
import { startPrivateEngines } from "./support/private-engines.ts";
import { faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS, runScenario } from "./support/scenario.ts";
import { sleep } from "./support/workload.ts";

const targets = engineTargets();

describe.runIf(targets)("fault 5: Redis restarts and loses everything while traffic flows", () => {
  let engines: PrivateEngines | undefined;
  let mesh: FaultCluster | undefined;

  beforeAll(async () => {
    engines = await startPrivateEngines(["redis"]);
    const redisUrl = engines.env.PARLEY_REDIS_URL;
    if (redisUrl === undefined) throw new Error("the private engines printed no PARLEY_REDIS_URL");
    mesh = await startFaultCluster({ engines: { redisUrl } });
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
      async fault({ recorder, random, traffic }) {
        const redis = engines as PrivateEngines;
        await sleep(2_000 + random.int(2_000));
        recorder.note(`stopping Redis (${traffic.started} sends)`);
        await redis.stop(["redis"]);
        await sleep(1_000 + random.int(2_000));
        await redis.start(["redis"], { wipe: true });
        recorder.note(`Redis back, empty (${traffic.started} sends)`);
        await sleep(5_000);
        return undefined;
      },
    });

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: nothing lost; whatever came twice is shown once`,
      async () => {
        const { result, stats, run: done } = await run(`seed${seed}`, seed, false);
        expect(stats.unacked).toBe(0);
        // I5 is not kept across a loss of Redis, and the sender's port says so
        // (services/sender/domain/ports.ts, IdempotencyStore): a send whose key Redis lost (an
        // attempt that published and then failed, or an answer whose key was wiped before a
        // retry) is accepted again under a new id, while history keeps the first copy. Such sends,
        // begun before Redis came back empty, are reported, not failed; every other violation
        // (and any I5 of a send begun afterwards) fails the run.
        const history = done.recorder.history();
        const back = history.notes.find((n) => n.text.startsWith("Redis back"))?.at ?? 0;
        const keyLost = new Set(
          history.sends
            .filter((send) => (send.attempts[0]?.startedAt ?? Number.POSITIVE_INFINITY) < back)
            .map((send) => `${send.sender}|${send.clientMessageId}`),
        );
        const lostKey = (v: Violation) =>
          v.invariant === "I5" && keyLost.has(`${v.device}|${v.clientMessageId}`);
        const excused = result.violations.filter(lostKey);
        if (excused.length > 0) {
          console.warn(
            `[fault] fault 5 seed ${seed}: ${excused.length} send(s) answered with a new id after Redis lost the key:\n${describeViolations(excused)}`,
          );
        }
        expect(describeViolations(result.violations.filter((v) => !lostKey(v)))).toBe("no violations");
      },
      FAULT_RUN_TIMEOUT_MS,
    );
  }

  it(
    "control: a sender without idempotency keys answers repeated sends with new ids; history still stores each once",
    async () => {
      const cluster = mesh as FaultCluster;
      await cluster.restart("sender", { PARLEY_SENDER_IDEMPOTENCY: "false" });
      try {
        const { result } = await run("control", 1, true);
        expect(result.violations).not.toEqual([]);
        expect(violatedInvariants(result.violations)).toEqual(["I5"]);
      } finally {
        await cluster.restart("sender");
      }
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
