import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, describe, expect, it } from "vitest";
import { openSqlite } from "../../../../lib/sqlite.ts";
import type { StoreMessageInput } from "../../domain/history-store.ts";
import { HISTORY_DB_FILE, prepareHistoryFile } from "./history-file.ts";
import { createSqliteHistoryStore } from "./sqlite-history-store.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const T0 = new Date("2030-01-01T00:00:00.000Z");
const bobPhone = { userId: "bob", deviceId: "phone" };
const message = (messageId: string, clientMessageId: string): StoreMessageInput => ({
  message: {
    messageId,
    conversationId: "conversation-1",
    seq: 0,
    sender: { userId: "alice", deviceId: "phone" },
    clientMessageId,
    kind: 1,
    sharedCiphertext: undefined,
    acceptedAt: T0,
    traceparent: "",
    forceTrace: false,
  },
  targets: [{ device: bobPhone, ciphertext: new Uint8Array([7]) }],
  recipientUserIds: ["bob"],
  membershipVersion: 1n,
  storedAt: T0,
  expiresAt: new Date(T0.getTime() + 86_400_000),
});
const event = (key: string) => () => [{ topic: "history.events", key, payload: new Uint8Array([1]) }];

describe("prepareHistoryFile", () => {
  it("moves history's tables out of parley.db into history.db, where the store finds its data", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "parley-history-file-"));
    dirs.push(dataDir);
    const shared = join(dataDir, "parley.db");
    const other = openSqlite(shared);
    other.exec(
      "CREATE TABLE connection_devices (id TEXT PRIMARY KEY); INSERT INTO connection_devices VALUES ('d1')",
    );
    other.close();
    const before = createSqliteHistoryStore({ path: shared });
    expect(await before.storeMessage(message("m-1", "c-1"), event("m-1"))).toEqual({
      outcome: "stored",
      seq: 1,
    });
    before.close();

    const path = prepareHistoryFile(dataDir);
    expect(path).toBe(join(dataDir, HISTORY_DB_FILE));
    const after = createSqliteHistoryStore({ path });
    try {
      const inbox = await after.readInbox({ device: bobPhone, afterPosition: 0, limit: 10, now: T0 });
      expect(
        inbox.items.map((item) => (item.kind === "message" ? item.message.messageId : item.kind)),
      ).toEqual(["m-1"]);
      // The event not yet published came along, and the seq counter goes on.
      expect((await after.outbox.pending(10)).map((record) => record.key)).toEqual(["m-1"]);
      expect(await after.storeMessage(message("m-2", "c-2"), event("m-2"))).toEqual({
        outcome: "stored",
        seq: 2,
      });
      expect(await after.storeMessage(message("m-1", "c-1"), event("m-1"))).toMatchObject({
        outcome: "duplicate",
      });
    } finally {
      after.close();
    }

    const db = new DatabaseSync(shared);
    try {
      expect(db.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'history%'").all()).toEqual([]);
      expect(db.prepare("SELECT * FROM schema_migrations WHERE owner = 'history'").all()).toEqual([]);
      expect(db.prepare("SELECT id FROM connection_devices").all()).toEqual([{ id: "d1" }]);
    } finally {
      db.close();
    }
    // Every later start finds nothing to move and leaves both files alone.
    expect(prepareHistoryFile(dataDir)).toBe(path);
  });

  it("creates no parley.db on a fresh data directory", () => {
    const dataDir = mkdtempSync(join(tmpdir(), "parley-history-file-"));
    dirs.push(dataDir);
    expect(prepareHistoryFile(dataDir)).toBe(join(dataDir, HISTORY_DB_FILE));
    expect(existsSync(join(dataDir, "parley.db"))).toBe(false);
  });
});
