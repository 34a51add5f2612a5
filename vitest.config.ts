import { defineConfig } from "vitest/config";

const shared = {
  exclude: ["node_modules/**", ".build/**"],
  testTimeout: 30_000,
  hookTimeout: 60_000,
};

/**
 * The end-to-end suites that run a second time on the cluster profile (one process per service,
 * two edges, two delivery workers, real engines) when the engines are on (PARLEY_ENGINES=1, as
 * `.ci/run` sets it). Their mesh comes from test/support/mesh-users.ts `startTestMesh`, which reads
 * PARLEY_TEST_PROFILE.
 */
const CLUSTER_SUITES = ["test/messaging.test.ts", "test/contacts-keys.test.ts"];

/**
 * Suites about the cluster profile itself, which start a cluster of their own: with the engines on
 * they run in the cluster project only (not twice); without them the embedded project lists them as
 * skipped.
 */
const CLUSTER_ONLY_SUITES = ["test/tracing-cluster.test.ts"];

/**
 * Issue 6's fault scenarios (test/fault/README.md): each starts a cluster of its own and kills parts
 * of it, so they run in their own project, one file at a time, after the other projects; without
 * the engines the embedded project lists them as skipped. Their checker's unit tests
 * (test/fault/support/) run in the embedded project.
 */
const FAULT_SUITES = ["test/fault/*.test.ts"];

const enginesOn = process.env.PARLEY_ENGINES === "1";
/**
 * With the engines on, `npm test` runs the fault suites too (as CI does); PARLEY_FAULT=0 leaves
 * them out of a developer's run (about 17 minutes of the whole). `npm run test:fault` runs them alone.
 */
const faultOn = enginesOn && process.env.PARLEY_FAULT !== "0";

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          ...shared,
          name: "embedded",
          include: ["**/*.test.ts"],
          exclude: [...shared.exclude, ...FAULT_SUITES, ...(enginesOn ? CLUSTER_ONLY_SUITES : [])],
        },
      },
      ...(enginesOn
        ? [
            {
              test: {
                ...shared,
                name: "cluster",
                include: [...CLUSTER_SUITES, ...CLUSTER_ONLY_SUITES],
                env: { PARLEY_TEST_PROFILE: "cluster" },
                // After the embedded project: each file here runs a whole cluster, and on 2 cores
                // the two together starve each other's deadlines.
                sequence: { groupOrder: 1 },
                // A whole cluster per file on 2 cores: generous, since what is checked is
                // correctness; speed is measured by npm run bench.
                testTimeout: 180_000,
                hookTimeout: 180_000,
              },
            },
          ]
        : []),
      ...(faultOn
        ? [
            {
              test: {
                ...shared,
                name: "fault",
                include: FAULT_SUITES,
                // One cluster at a time on a 2-core machine, after the other projects finished.
                fileParallelism: false,
                sequence: { groupOrder: 2 },
                testTimeout: 480_000,
                hookTimeout: 900_000,
              },
            },
          ]
        : []),
    ],
  },
});
