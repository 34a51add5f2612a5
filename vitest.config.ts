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

const enginesOn = process.env.PARLEY_ENGINES === "1";

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          ...shared,
          name: "embedded",
          include: ["**/*.test.ts"],
          exclude: [...shared.exclude, ...(enginesOn ? CLUSTER_ONLY_SUITES : [])],
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
                testTimeout: 60_000,
                hookTimeout: 180_000,
              },
            },
          ]
        : []),
    ],
  },
});
