// Child process for the embedded broker's durability test: publishes `count` messages to the
// topic "durability", eight at a time (so group commits hold several), and prints "<id> <n>" for
// each as soon as publish() resolves. The test SIGKILLs it mid-way.
import { createEmbeddedBroker } from "../embedded-broker.ts";

const [path, countArg] = process.argv.slice(2);
if (path === undefined || countArg === undefined) {
  process.stderr.write("usage: publisher.ts <sqlite path> <count>\n");
  process.exit(2);
}
const count = Number(countArg);
const broker = await createEmbeddedBroker({ path });
const encoder = new TextEncoder();
for (let i = 0; i < count; i += 8) {
  const wave = Array.from({ length: Math.min(8, count - i) }, (_, j) => i + j);
  await Promise.all(
    wave.map(async (n) => {
      const { id } = await broker.publish("durability", {
        key: `k${n % 5}`,
        payload: encoder.encode(`message ${n}`),
        properties: { n: String(n) },
      });
      // Writes to a pipe are synchronous on Linux: the line is out before the next publish.
      process.stdout.write(`${id} ${n}\n`);
    }),
  );
}
process.stdout.write("done\n");
await broker.close();
