// Test helper: a worker thread with its own connection to a key store file that claims bundles as
// soon as every worker is ready, so claims from several connections really run at once.
import { parentPort, workerData } from "node:worker_threads";
import { createSqliteKeyStore } from "./sqlite-key-store.ts";

const { path, userId, claims, barrier } = workerData as {
  path: string;
  userId: string;
  claims: number;
  barrier: SharedArrayBuffer;
};
const store = createSqliteKeyStore({ path });
const gate = new Int32Array(barrier);
Atomics.add(gate, 0, 1);
Atomics.notify(gate, 0);
while (Atomics.load(gate, 1) === 0) Atomics.wait(gate, 1, 0, 50);

const answers: Array<number | "last_resort"> = [];
for (let i = 0; i < claims; i++) {
  const result = await store.claimPrekeyBundles({
    userId,
    deviceIds: undefined,
    excludeDeviceId: undefined,
    now: new Date(),
    lowWatermark: 10,
    prekeysLowIntervalMs: 3_600_000,
    traceparent: "",
  });
  if (result.kind !== "claimed" || result.bundles.length !== 1) throw new Error("expected one bundle");
  const prekey = result.bundles[0]?.prekey;
  answers.push(prekey?.kind === "one_time" ? prekey.prekey.keyId : "last_resort");
}
store.close();
parentPort?.postMessage(answers);
