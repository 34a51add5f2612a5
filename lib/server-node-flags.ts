/**
 * The Node flags every Parley server process runs with: `npm start` (package.json), the cluster's
 * processes (tools/cluster), the container images (`NODE_OPTIONS` in deploy/docker/Dockerfile,
 * which Tilt's `--watch` entrypoint inherits) and the bench's processes under test, so what is
 * measured is what ships. `server-node-flags.test.ts` fails when one of them drifts.
 *
 * `--max-semi-space-size=64` (MiB; V8's default is 16 on 64-bit): a group message to 5,000 devices
 * allocates its per-device objects (pushes, acks, receipts) faster than the default young
 * generation turns over, so most of them lived through two scavenges and were promoted, to be
 * collected again by the old generation. With 64 MiB they die young. Measured on S2 (1,000 members
 * x 5 devices, sends 2 s apart, two alternated pairs): mesh CPU per send 2.21/2.28 s -> 1.96/1.81 s,
 * peak RSS unchanged (1.24 GB), at the price of up to ~100 MiB more young generation per process.
 */
export const SERVER_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=64"];
