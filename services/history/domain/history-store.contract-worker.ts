// Worker thread of the history store contract: opens its own handle on the storage under test
// (through the adapter's `openHistoryStore`), waits until every worker is ready, then stores
// messages into one conversation as fast as it can and reports the seqs it got.
import { parentPort, workerData } from "node:worker_threads";
import { v7 as uuidv7 } from "uuid";
import type { HistoryStore } from "./history-store.ts";

const { module, config, conversationId, count, worker, barrier } = workerData as {
  module: string;
  config: unknown;
  conversationId: string;
  count: number;
  worker: number;
  barrier: SharedArrayBuffer;
};
const { openHistoryStore } = (await import(module)) as { openHistoryStore(config: unknown): HistoryStore };
const store = openHistoryStore(config);
const gate = new Int32Array(barrier);
Atomics.add(gate, 0, 1);
Atomics.notify(gate, 0);
while (Atomics.load(gate, 1) === 0) Atomics.wait(gate, 1, 0, 50);

const seqs: number[] = [];
const at = new Date("2030-01-01T00:00:00.000Z");
for (let i = 0; i < count; i++) {
  const sender = { userId: `writer${worker}`, deviceId: "phone" };
  const result = await store.storeMessage(
    {
      message: {
        messageId: uuidv7(),
        conversationId,
        seq: 0,
        sender,
        clientMessageId: uuidv7(),
        kind: 1,
        sharedCiphertext: new Uint8Array([worker, i]),
        acceptedAt: at,
        traceparent: "",
        forceTrace: false,
      },
      targets: [{ device: { userId: "reader", deviceId: "phone" }, ciphertext: undefined }],
      recipientUserIds: ["reader"],
      membershipVersion: 1n,
      storedAt: at,
      expiresAt: new Date(at.getTime() + 86_400_000),
    },
    () => [],
  );
  seqs.push(result.seq);
}
store.close();
parentPort?.postMessage(seqs);
