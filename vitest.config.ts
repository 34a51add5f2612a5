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

export default defineConfig({
  test: {
    projects: [
      { test: { ...shared, name: "embedded", include: ["**/*.test.ts"] } },
      ...(process.env.PARLEY_ENGINES === "1"
        ? [
            {
              test: {
                ...shared,
                name: "cluster",
                include: CLUSTER_SUITES,
                env: { PARLEY_TEST_PROFILE: "cluster" },
                testTimeout: 60_000,
                hookTimeout: 180_000,
              },
            },
          ]
        : []),
    ],
  },
});
