// `npm run demo`: two SDK clients chatting through a real mesh, then a quick local measurement.
//
//   npm run demo                                   starts an embedded mesh in a temp folder
//   PARLEY_EDGE_URL=http://127.0.0.1:8080 npm run demo
//                                                  uses a running `npm start` mesh; tokens are
//                                                  minted with the dev issuer of PARLEY_DATA_DIR
//                                                  (default .data, as `npm start` uses)
//   DEMO_MESSAGES=2000 DEMO_PAIRS=40 DEMO_IN_FLIGHT=4
//                                                  size of the loaded measurement
//
// The measurement spreads the messages over DEMO_PAIRS sender/recipient pairs because the sender
// service limits each device (burst 50, then 20/s): DEMO_MESSAGES / DEMO_PAIRS <= 50 measures the
// mesh rather than that limit.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { ParleyClient } from "../../clients/ts/index.ts";
import { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import { createLogger } from "../../lib/logging.ts";
import type { MeshTarget, TestDevice, TestUser } from "../../test/support/mesh-users.ts";
import {
  connectUsers,
  createTransportPool,
  createUser,
  inBatches,
  pairwiseEnvelope,
  readCiphertext,
} from "../../test/support/mesh-users.ts";
import { startEmbeddedMesh } from "../mesh/embedded-mesh.ts";

const env = process.env;
const totalMessages = positiveInt(env.DEMO_MESSAGES, 2000);
const pairCount = Math.min(positiveInt(env.DEMO_PAIRS, 40), totalMessages);
const inFlightPerSender = positiveInt(env.DEMO_IN_FLIGHT, 4);
/** Messages per pair in the one-at-a-time latency run. */
const quietPerPair = 5;

function positiveInt(value: string | undefined, fallback: number): number {
  const n = Number(value ?? fallback);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`expected a positive integer, got ${value}`);
  return n;
}

const print = (line: string): void => {
  process.stdout.write(`${line}\n`);
};
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const kindName = (kind: ReceiptKind) => (kind === ReceiptKind.READ ? "READ" : "DELIVERED");

async function openMesh(): Promise<{ target: MeshTarget; close(): Promise<void>; where: string }> {
  const pool = (url: string) => createTransportPool(url, 4);
  if (env.PARLEY_EDGE_URL !== undefined && env.PARLEY_EDGE_URL !== "") {
    const dataDir = env.PARLEY_DATA_DIR ?? ".data";
    const transports = pool(env.PARLEY_EDGE_URL);
    return {
      target: { edgeUrl: env.PARLEY_EDGE_URL, dataDir, transport: () => transports.next() },
      close: async () => {},
      where: `the mesh at ${env.PARLEY_EDGE_URL} (tokens from ${dataDir})`,
    };
  }
  const dataDir = mkdtempSync(join(tmpdir(), "parley-demo-"));
  const mesh = await startEmbeddedMesh({
    dataDir,
    edgeHost: "127.0.0.1",
    edgePort: 0,
    logger: createLogger("demo-mesh", "silent"),
  });
  const transports = pool(mesh.edgeUrl);
  return {
    target: { edgeUrl: mesh.edgeUrl, dataDir, transport: () => transports.next() },
    async close() {
      await mesh.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
    where: `an embedded mesh started for the demo at ${mesh.edgeUrl}`,
  };
}

/** Prints what one device's SDK client sees. */
function narrate(device: TestDevice, names: Map<string, string>) {
  const who = `[${device.userId}/${device.deviceId}]`.padEnd(16);
  const name = (userId: string | undefined) => names.get(userId ?? "") ?? userId ?? "?";
  device.client.onMessage(({ message, source }) => {
    const from = message.sender?.deviceId === device.deviceId && message.sender.userId === device.userId;
    const text = readCiphertext(message).text;
    print(
      `${who} ${from ? "(own message)" : "received"} "${text}" from ${name(message.sender?.userId)}/${message.sender?.deviceId}, seq ${message.seq} (${source})`,
    );
  });
  device.client.onReceipt((receipt) => {
    print(
      `${who} receipt: ${name(receipt.reader?.userId)}/${receipt.reader?.deviceId} ${kindName(receipt.kind)} up to seq ${receipt.upToSeq}`,
    );
  });
  device.client.onTyping((typing) => {
    const expires =
      typing.expiresAt === undefined
        ? ""
        : `, expires in ${((timestampDate(typing.expiresAt).getTime() - Date.now()) / 1000).toFixed(1)} s`;
    print(
      `${who} ${name(typing.typist?.userId)} ${typing.typing ? "is typing" : "stopped typing"}${expires}`,
    );
  });
  device.client.onError(({ error, operation }) =>
    print(`${who} error (${operation}): ${error.code} ${error.reason}: ${error.message}`),
  );
}

async function conversation(target: MeshTarget, suffix: string) {
  print("\n== Two SDK clients ==");
  const alice = await createUser(target, `alice${suffix}`, ["phone", "laptop"], { displayName: "Alice" });
  const bob = await createUser(target, `bob${suffix}`, ["phone"], { displayName: "Bob" });
  const names = new Map([
    [alice.userId, "alice"],
    [bob.userId, "bob"],
  ]);
  print(`users: ${alice.userId} (phone, laptop), ${bob.userId} (phone); devices registered with signed keys`);
  const conversationId = await connectUsers(alice, bob);
  print(`${alice.userId} asked, ${bob.userId} accepted: direct conversation ${conversationId}`);
  for (const device of [...alice.devices, ...bob.devices]) narrate(device, names);
  await Promise.all([...alice.devices, ...bob.devices].map((d) => d.client.connect()));
  print("all three devices connected (Session streams over HTTP/2)\n");

  const say = async (from: TestDevice, text: string) => {
    const outcome = await from.client.send({
      conversationId,
      envelope: pairwiseEnvelope(from, [alice, bob], text),
    });
    const who = `[${from.userId}/${from.deviceId}]`.padEnd(16);
    print(`${who} sent "${text}" (message ${outcome.messageId})`);
    await sleep(150);
  };
  await alice.primary.client.setTyping(conversationId, true);
  await sleep(150);
  await say(alice.primary, "Hi Bob!");
  await say(alice.primary, "Lunch at noon?");
  await bob.primary.client.setTyping(conversationId, true);
  await sleep(150);
  await bob.primary.client.setTyping(conversationId, false);
  await sleep(100);
  await say(bob.primary, "Sure, see you there");
  print(
    `${`[${bob.userId}/phone]`.padEnd(16)} ` +
      "marks the conversation read up to seq 2 (seq 3 is bob's own: a read watermark passes over it)",
  );
  await bob.primary.client.markRead(conversationId, { upToSeq: 2n });
  await sleep(300);
  await Promise.all([...alice.devices, ...bob.devices].map((d) => d.client.close()));
}

interface Pair {
  readonly sender: TestUser;
  readonly recipient: TestUser;
  readonly conversationId: string;
}

/**
 * Sends `texts[i]` lists from pair i (at most `inFlight` at a time per sender), and resolves with
 * each message's send -> display latency (ms, sorted), the time from the first send to the last
 * display, and the time until every send was accepted.
 */
async function run(pairs: readonly Pair[], texts: readonly string[][], inFlight: number, sequential = false) {
  const total = texts.reduce((n, t) => n + t.length, 0);
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  let lastShownAt = 0;
  let done: () => void = () => {};
  const allShown = new Promise<void>((resolve) => {
    done = resolve;
  });
  const offs = pairs.map((p) =>
    p.recipient.primary.client.onMessage(({ message }) => {
      const text = readCiphertext(message).text;
      const start = sentAt.get(text);
      if (start === undefined) return;
      sentAt.delete(text);
      lastShownAt = performance.now();
      latencies.push(lastShownAt - start);
      if (latencies.length === total) done();
    }),
  );
  const send = async (pair: Pair, text: string) => {
    sentAt.set(text, performance.now());
    await pair.sender.primary.client.send({
      conversationId: pair.conversationId,
      envelope: pairwiseEnvelope(pair.sender.primary, [pair.sender, pair.recipient], text),
    });
  };
  const startedAt = performance.now();
  if (sequential) {
    // One message in the whole mesh at a time: send, wait until it is shown, next.
    for (let j = 0; j < Math.max(...texts.map((t) => t.length)); j++) {
      for (const [i, pair] of pairs.entries()) {
        const text = texts[i]?.[j];
        if (text === undefined) continue;
        const shown = latencies.length;
        await send(pair, text);
        while (latencies.length === shown) await sleep(1);
      }
    }
  } else {
    await Promise.all(
      pairs.map((pair, i) => inBatches(texts[i] ?? [], inFlight, (text) => send(pair, text))),
    );
  }
  const acceptedMs = performance.now() - startedAt;
  const timeout = setTimeout(() => done(), 60_000);
  await allShown;
  clearTimeout(timeout);
  for (const off of offs) off();
  if (latencies.length !== total)
    throw new Error(`only ${latencies.length} of ${total} messages were shown within 60 s`);
  latencies.sort((a, b) => a - b);
  return { latencies, elapsedMs: lastShownAt - startedAt, acceptedMs };
}

const pct = (sorted: readonly number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
const summary = (sorted: readonly number[]) =>
  `p50 ${pct(sorted, 50).toFixed(1)} ms, p90 ${pct(sorted, 90).toFixed(1)} ms, p99 ${pct(sorted, 99).toFixed(1)} ms, max ${(sorted.at(-1) ?? Number.NaN).toFixed(1)} ms`;

async function measure(target: MeshTarget, suffix: string) {
  print(`\n== Measurement: ${pairCount} online sender/recipient pairs, one device each ==`);
  const users = await inBatches(
    Array.from({ length: pairCount * 2 }, (_, i) => i),
    16,
    (i) => createUser(target, `bench${suffix}-${i % 2 === 0 ? "s" : "r"}${Math.floor(i / 2)}`, ["phone"]),
  );
  const pairs: Pair[] = await inBatches(
    Array.from({ length: pairCount }, (_, i) => i),
    16,
    async (i) => {
      const sender = users[2 * i] as TestUser;
      const recipient = users[2 * i + 1] as TestUser;
      return { sender, recipient, conversationId: await connectUsers(sender, recipient) };
    },
  );
  const clients: ParleyClient[] = users.map((u) => u.primary.client);
  await inBatches(clients, 32, (c) => c.connect());

  // Unloaded: one message at a time.
  const quiet = await run(
    pairs,
    pairs.map((_, i) => Array.from({ length: quietPerPair }, (_, j) => `quiet:${i}:${j}`)),
    1,
    true,
  );
  print(`one at a time (${quiet.latencies.length} messages): send -> display ${summary(quiet.latencies)}`);

  // Loaded: every pair sends at once, a few sends in flight per device (kept in order per conversation).
  const perPair = Math.ceil(totalMessages / pairCount);
  const texts = pairs.map((_, i) =>
    Array.from(
      { length: Math.max(0, Math.min(perPair, totalMessages - i * perPair)) },
      (_, j) => `load:${i}:${j}`,
    ),
  );
  await sleep(quietPerPair * 50 + 500); // let the send rate limit's buckets refill
  const load = await run(pairs, texts, inFlightPerSender);
  print(
    `all at once (${load.latencies.length} messages, ${inFlightPerSender} in flight per sender): ` +
      `${((load.latencies.length * 1000) / load.elapsedMs).toFixed(0)} messages/s delivered ` +
      `(first send to last display ${load.elapsedMs.toFixed(0)} ms; all accepted after ${load.acceptedMs.toFixed(0)} ms)`,
  );
  print(`  send -> display under that load: ${summary(load.latencies)}`);
  print("  every message was shown exactly once");
  await inBatches(clients, 32, (c) => c.close());
}

const mesh = await openMesh();
print(`Parley demo on ${mesh.where}`);
// Fresh user ids on a shared mesh, so the demo can run again against the same data.
const suffix = env.PARLEY_EDGE_URL ? `-${Date.now().toString(36)}` : "";
try {
  await conversation(mesh.target, suffix);
  await measure(mesh.target, suffix);
} finally {
  await mesh.close();
}
