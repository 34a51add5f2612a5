import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterAll, describe, expect, it } from "vitest";
import { openSqlite } from "../../../../lib/sqlite.ts";
import { describeKeyStoreContract } from "../../domain/key-store.contract.ts";
import { deviceKeys } from "../../test-support.ts";
import { createSqliteKeyStore } from "./sqlite-key-store.ts";

const dir = mkdtempSync(join(tmpdir(), "parley-key-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

describeKeyStoreContract("sqlite (in memory)", () => createSqliteKeyStore({ path: ":memory:" }));
describeKeyStoreContract("sqlite (file)", () =>
  createSqliteKeyStore({ path: join(dir, `keys-${files++}.db`) }),
);

describe("sqlite key store", () => {
  it("keeps its data in the file across reopening, beside other services' tables", async () => {
    const path = join(dir, "shared.db");
    const db = openSqlite(path);
    db.exec("CREATE TABLE other_service (x INTEGER)");
    const store = createSqliteKeyStore({ db });
    const keys = deviceKeys({ oneTimePrekeys: 4 });
    await store.registerDevice({
      address: { userId: "alice", deviceId: "phone" },
      displayName: "",
      identityKey: keys.identityKey,
      signedPrekey: keys.signedPrekey,
      lastResortPrekey: keys.lastResortPrekey,
      oneTimePrekeys: keys.oneTimePrekeys,
      maxDevices: 5,
      maxOneTimePrekeys: 1000,
      now: new Date(),
      traceparent: "",
    });
    store.close();
    // The store did not own the database: it is still open.
    expect(db.prepare("SELECT COUNT(*) AS n FROM other_service").get()).toEqual({ n: 0 });
    db.close();

    const reopened = createSqliteKeyStore({ path });
    const device = await reopened.getDevice({ userId: "alice", deviceId: "phone" });
    expect(device?.identityKey).toEqual(keys.identityKey);
    expect(device?.oneTimePrekeyCount).toBe(4);
    expect(await reopened.outbox.pending(10)).toHaveLength(1);
    reopened.close();
  });
});

describe("sqlite key store across connections", () => {
  it("hands out each one-time prekey once when 5 connections claim at the same time", async () => {
    const path = join(dir, "concurrent.db");
    const store = createSqliteKeyStore({ path });
    const keys = deviceKeys({ oneTimePrekeys: 30 });
    await store.registerDevice({
      address: { userId: "alice", deviceId: "phone" },
      displayName: "",
      identityKey: keys.identityKey,
      signedPrekey: keys.signedPrekey,
      lastResortPrekey: keys.lastResortPrekey,
      oneTimePrekeys: keys.oneTimePrekeys,
      maxDevices: 5,
      maxOneTimePrekeys: 1000,
      now: new Date(),
      traceparent: "",
    });
    const barrier = new SharedArrayBuffer(8);
    const gate = new Int32Array(barrier);
    const workers = Array.from(
      { length: 5 },
      () =>
        new Worker(new URL("./claim-worker.ts", import.meta.url), {
          workerData: { path, userId: "alice", claims: 10, barrier },
        }),
    );
    const answers = workers.map(
      (worker) =>
        new Promise<Array<number | "last_resort">>((resolve, reject) => {
          worker.once("message", resolve);
          worker.once("error", reject);
        }),
    );
    // Every worker has opened its connection: let them all go at once.
    while (Atomics.load(gate, 0) < workers.length) Atomics.wait(gate, 0, Atomics.load(gate, 0), 50);
    Atomics.store(gate, 1, 1);
    Atomics.notify(gate, 1);
    const all = (await Promise.all(answers)).flat();
    await Promise.all(workers.map((w) => w.terminate()));

    const oneTime = all.filter((a) => a !== "last_resort");
    expect(all).toHaveLength(50);
    expect(oneTime).toHaveLength(30);
    expect(new Set(oneTime).size).toBe(30);
    expect(all.filter((a) => a === "last_resort")).toHaveLength(20);
    expect((await store.getDevice({ userId: "alice", deviceId: "phone" }))?.oneTimePrekeyCount).toBe(0);
    store.close();
  });
});
