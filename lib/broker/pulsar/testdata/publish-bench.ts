// Publish latency and throughput of the Pulsar adapter against a running Pulsar:
//   node lib/broker/pulsar/testdata/publish-bench.ts [webUrl] [sequential count] [pipelined count] [window]
// Uses the namespace parley-test/bench and deletes its topic afterwards. Prints one JSON line.
import { randomBytes } from "node:crypto";
import { createLogger } from "../../../logging.ts";
import { createPulsarAdmin } from "../admin.ts";
import { ensurePulsarNamespace } from "../namespace.ts";
import { createPulsarBroker } from "../pulsar-broker.ts";

const [
  webUrl = "http://127.0.0.1:18080",
  sequentialArg = "2000",
  pipelinedArg = "20000",
  windowArg = "1000",
] = process.argv.slice(2);
const sequential = Number(sequentialArg);
const pipelined = Number(pipelinedArg);
const window = Number(windowArg);
const tenant = "parley-test";
const namespace = "bench";
await ensurePulsarNamespace({ webUrl, tenant, namespace });
const broker = await createPulsarBroker({ webUrl, tenant, namespace, logger: createLogger("bench", "warn") });
const topic = `bench.${Date.now()}`;
// About the size of a MessageAccepted with a few device payloads.
const payload = randomBytes(1_024);
const properties = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" };

for (let i = 0; i < 200; i++) await broker.publish(topic, { key: `k${i % 16}`, payload, properties });

const latencies: number[] = [];
for (let i = 0; i < sequential; i++) {
  const start = process.hrtime.bigint();
  await broker.publish(topic, { key: `k${i % 16}`, payload, properties });
  latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
}
latencies.sort((a, b) => a - b);
const quantile = (q: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;

const started = performance.now();
let next = 0;
await Promise.all(
  Array.from({ length: window }, async () => {
    while (next < pipelined) {
      const i = next++;
      await broker.publish(topic, { key: `k${i % 16}`, payload, properties });
    }
  }),
);
const seconds = (performance.now() - started) / 1_000;
await broker.close();
await createPulsarAdmin({ webUrl }).deleteTopic(`${tenant}/${namespace}/${topic}`);
process.stdout.write(
  `${JSON.stringify({
    payloadBytes: payload.length,
    sequential: { count: sequential, p50Ms: quantile(0.5), p99Ms: quantile(0.99), maxMs: quantile(1) },
    pipelined: { count: pipelined, window, seconds, messagesPerSecond: Math.round(pipelined / seconds) },
  })}\n`,
);
