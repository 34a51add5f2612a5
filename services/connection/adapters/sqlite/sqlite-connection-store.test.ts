import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, describe, expect, it } from "vitest";
import { describeConnectionStoreContract } from "../../domain/connection-store.contract.ts";
import { pairKey } from "../../domain/model.ts";
import { createSqliteConnectionStore } from "./sqlite-connection-store.ts";

describeConnectionStoreContract("sqlite (in memory)", () =>
  createSqliteConnectionStore({ path: ":memory:" }),
);

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
function tempFile(): string {
  const dir = mkdtempSync(join(tmpdir(), "parley-connection-"));
  dirs.push(dir);
  return join(dir, "parley.db");
}

describeConnectionStoreContract("sqlite (file)", () => createSqliteConnectionStore({ path: tempFile() }));

describe("sqlite connection store", () => {
  it("keeps what was committed, and the unpublished events, across reopening the file", async () => {
    const path = tempFile();
    const first = createSqliteConnectionStore({ path });
    const at = new Date("2030-01-01T00:00:00.000Z");
    await first.upsertProfile({ userId: "alice", displayName: "Alice", avatarUrl: "", at });
    await first.commitPair({
      pair: pairKey("alice", "bob"),
      expectedVersion: 0,
      version: 1,
      lowView: {
        userId: "alice",
        otherUserId: "bob",
        state: "pending_outgoing",
        createdAt: at,
        updatedAt: at,
      },
      highView: {
        userId: "bob",
        otherUserId: "alice",
        state: "pending_incoming",
        createdAt: at,
        updatedAt: at,
      },
      events: [{ topic: "chat.contacts", key: "alice/bob", payload: new Uint8Array([1, 2, 3]) }],
    });
    await first.close();

    const second = createSqliteConnectionStore({ path });
    expect((await second.getUsers(["alice"])).get("alice")?.displayName).toBe("Alice");
    expect((await second.getPair(pairKey("alice", "bob"))).version).toBe(1);
    const [pending] = await second.outbox.pending(10);
    expect(pending?.key).toBe("alice/bob");
    expect([...(pending?.payload ?? [])]).toEqual([1, 2, 3]);
    await second.close();
  });

  it("shares an open database with other services and leaves it open on close", async () => {
    const db = new DatabaseSync(":memory:");
    const store = createSqliteConnectionStore({ db });
    await store.registerUser("alice", new Date());
    await store.close();
    expect(db.isOpen).toBe(true);
    const owners = db.prepare("SELECT owner, version FROM schema_migrations").all();
    expect(owners).toEqual([{ owner: "connection", version: 1 }]);
    db.close();
  });

  it("uses the indexes for the queries a 1,000-member group runs", () => {
    const db = new DatabaseSync(":memory:");
    createSqliteConnectionStore({ db });
    const plan = (sql: string) =>
      db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all()
        .map((row) => String(row.detail))
        .join("\n");
    expect(
      plan(
        "SELECT * FROM connection_members WHERE conversation_id = 'g' AND (role_rank, user_id) > (0, 'a') ORDER BY role_rank, user_id LIMIT 10",
      ),
    ).toMatch(/USING (COVERING )?INDEX connection_members_by_role/);
    expect(
      plan(
        "SELECT * FROM connection_members WHERE user_id = 'u' AND conversation_id > '' ORDER BY conversation_id",
      ),
    ).toMatch(/USING (COVERING )?INDEX connection_members_by_user/);
    expect(
      plan(
        "SELECT * FROM connection_views WHERE other_user_id = 'x' AND user_id IN (SELECT value FROM json_each('[]'))",
      ),
    ).toMatch(/USING (COVERING )?INDEX connection_views_towards/);
    expect(
      plan(
        "SELECT * FROM connection_views WHERE user_id = 'u' AND other_user_id > '' ORDER BY other_user_id",
      ),
    ).toMatch(/USING PRIMARY KEY/);
    db.close();
  });
});
