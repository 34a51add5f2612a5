import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { v7 as uuidv7 } from "uuid";
import { afterEach, describe, expect, it } from "vitest";
import { openSqlite } from "../../../../lib/sqlite.ts";
import { describeHistoryStoreContract } from "../../domain/history-store.contract.ts";
import type { HistoryStore } from "../../domain/history-store.ts";
import { createSqliteHistoryStore } from "./sqlite-history-store.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
function tempFile(): string {
  const dir = mkdtempSync(join(tmpdir(), "parley-history-"));
  dirs.push(dir);
  return join(dir, "parley.db");
}

describeHistoryStoreContract("sqlite (file)", async () => {
  const path = tempFile();
  let store: HistoryStore | undefined = createSqliteHistoryStore({ path });
  return {
    store,
    async reopen() {
      store?.close();
      store = createSqliteHistoryStore({ path });
      return store;
    },
    worker: { module: new URL("./open-in-worker.ts", import.meta.url), config: { path } },
    dispose() {
      store?.close();
      store = undefined;
    },
  };
});

const T0 = new Date("2030-01-01T00:00:00.000Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

describe("sqlite history store", () => {
  const message = (conversationId: string, expiresAt: Date) => ({
    message: {
      messageId: uuidv7(),
      conversationId,
      seq: 0,
      sender: { userId: "alice", deviceId: "phone" },
      clientMessageId: uuidv7(),
      kind: 1,
      sharedCiphertext: undefined,
      acceptedAt: T0,
      traceparent: "",
      forceTrace: false,
    },
    targets: [
      { device: { userId: "bob", deviceId: "phone" }, ciphertext: new Uint8Array([1]) },
      { device: { userId: "bob", deviceId: "laptop" }, ciphertext: new Uint8Array([2]) },
    ],
    recipientUserIds: ["bob"],
    membershipVersion: 1n,
    storedAt: T0,
    expiresAt,
  });

  it("sweeps expired messages, ciphertexts, receipt rows and inbox items, in chunks, and keeps the counters", async () => {
    const path = tempFile();
    const store = createSqliteHistoryStore({ path });
    const conversationId = uuidv7();
    for (let i = 0; i < 1200; i++) await store.storeMessage(message(conversationId, at(100)), () => []);
    await store.storeMessage(message(conversationId, at(10_000)), () => []);
    const db = openSqlite(path);
    const count = (table: string) =>
      Number((db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n);
    expect(await store.sweepExpired(at(50))).toBe(0);
    // Each expired message has 2 targets, 1 receipt row, itself and 2 inbox items: 6 rows.
    expect(await store.sweepExpired(at(100))).toBe(1200 * 6);
    expect(
      ["history_messages", "history_message_targets", "history_message_recipients", "history_inbox"].map(
        count,
      ),
    ).toEqual([1, 2, 1, 2]);
    expect(db.prepare("SELECT last_seq FROM history_conversations").get()).toEqual({ last_seq: 1201 });
    expect(count("history_devices")).toBe(3);
    db.close();
    store.close();
  });

  it("shares a database opened by the caller with other services' tables, and leaves it open", async () => {
    const db = openSqlite(tempFile());
    db.exec("CREATE TABLE other_service (x INTEGER)");
    const store = createSqliteHistoryStore({ db });
    await store.storeMessage(message(uuidv7(), at(100)), () => []);
    store.close();
    expect(db.prepare("SELECT COUNT(*) AS n FROM history_messages").get()).toEqual({ n: 1 });
    expect(db.prepare("SELECT owner, version FROM schema_migrations").all()).toEqual([
      { owner: "history", version: 1 },
      { owner: "history", version: 2 },
    ]);
    db.close();
  });
});
