import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createGroupCommit, inTransaction, openSqlite, withoutWaitingForDisk } from "./sqlite.ts";

describe("createGroupCommit", () => {
  let dir: string;
  let db: DatabaseSync;
  let reader: DatabaseSync;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "parley-group-commit-"));
    db = openSqlite(join(dir, "store.db"));
    db.exec("CREATE TABLE item (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE)");
    // A second connection sees only what is committed, as another process would.
    reader = new DatabaseSync(join(dir, "store.db"));
  });

  afterEach(() => {
    reader.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const insert = (label: string) => () =>
    Number(db.prepare("INSERT INTO item (label) VALUES (?)").run(label).lastInsertRowid);
  const committedLabels = () =>
    (reader.prepare("SELECT label FROM item ORDER BY id").all() as { label: string }[]).map((r) => r.label);

  it("runs the writes queued in one turn in one transaction and answers only after its commit", async () => {
    const group = createGroupCommit(db);
    const seenUncommitted: string[][] = [];
    const first = group.run(insert("a"));
    const second = group.run(() => {
      // Inside the shared transaction: the first write is visible here, not to other connections.
      expect(db.isTransaction).toBe(true);
      seenUncommitted.push(committedLabels());
      return insert("b")();
    });
    expect(committedLabels()).toEqual([]);
    const ids = await Promise.all([first, second]);
    expect(ids).toEqual([1, 2]);
    expect(seenUncommitted).toEqual([[]]);
    expect(committedLabels()).toEqual(["a", "b"]);
    expect(db.isTransaction).toBe(false);
  });

  it("rolls back a failing write alone and commits the others of its transaction", async () => {
    const group = createGroupCommit(db);
    const results = await Promise.allSettled([
      group.run(insert("a")),
      group.run(() => {
        insert("half-done")();
        insert("a")(); // violates UNIQUE: the whole work, "half-done" included, is undone
      }),
      group.run(insert("c")),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/UNIQUE/);
    expect(committedLabels()).toEqual(["a", "c"]);
  });

  it("splits a long queue into transactions of at most maxBatch writes", async () => {
    const group = createGroupCommit(db, { maxBatch: 3 });
    // What other connections see when each write runs: the writes of the earlier transactions.
    const committedBefore: number[] = [];
    const labels = ["a", "b", "c", "d", "e", "f", "g"];
    await Promise.all(
      labels.map((label) =>
        group.run(() => {
          committedBefore.push(committedLabels().length);
          return insert(label)();
        }),
      ),
    );
    expect(committedLabels()).toEqual(labels);
    expect(committedBefore).toEqual([0, 0, 0, 3, 3, 3, 6]);
  });

  it("ends a transaction once maxBatchMs have passed, the rest first in the next", async () => {
    let clock = 0;
    const group = createGroupCommit(db, { maxBatchMs: 50, now: () => clock });
    const committedBefore: number[] = [];
    // Each write takes 30 ms of the fake clock: two fit in 50 ms, the third starts a new transaction.
    const labels = ["a", "b", "c", "d", "e"];
    const first = labels.map((label) =>
      group.run(() => {
        committedBefore.push(committedLabels().length);
        clock += 30;
        return insert(label)();
      }),
    );
    await Promise.all(first);
    expect(committedLabels()).toEqual(labels);
    expect(committedBefore).toEqual([0, 0, 2, 2, 4]);
  });

  it("commits what is queued when flushed before a close", async () => {
    const group = createGroupCommit(db);
    const pending = group.run(insert("a"));
    group.flushNow();
    expect(committedLabels()).toEqual(["a"]);
    await expect(pending).resolves.toBe(1);
  });

  it("rejects every write of a transaction that cannot begin, and keeps none of them", async () => {
    const group = createGroupCommit(db);
    // Another connection holds the write lock past the busy timeout.
    reader.exec("PRAGMA busy_timeout = 0");
    db.exec("PRAGMA busy_timeout = 10");
    reader.exec("BEGIN IMMEDIATE");
    const results = await Promise.allSettled([group.run(insert("a")), group.run(insert("b"))]);
    reader.exec("ROLLBACK");
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(String((results[0] as PromiseRejectedResult).reason)).toMatch(/locked|busy/i);
    expect(committedLabels()).toEqual([]);
    // The next writes go through once the lock is free.
    await expect(group.run(insert("c"))).resolves.toBe(1);
  });
});

describe("withoutWaitingForDisk", () => {
  it("commits with synchronous = NORMAL and gives the connection its own level back, also after a failure", () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-lazy-commit-"));
    const db = openSqlite(join(dir, "store.db"));
    try {
      db.exec("CREATE TABLE item (label TEXT NOT NULL)");
      const level = () =>
        Number((db.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous);
      expect(level()).toBe(2); // FULL, as openSqlite sets it
      const seen = withoutWaitingForDisk(db, () =>
        inTransaction(db, () => {
          db.prepare("INSERT INTO item VALUES ('a')").run();
          return level();
        }),
      );
      expect([seen, level()]).toEqual([1, 2]);
      expect(() =>
        withoutWaitingForDisk(db, () => {
          throw new Error("refused");
        }),
      ).toThrow("refused");
      expect(level()).toBe(2);
      // Inside a transaction SQLite refuses the switch: the work runs as part of it.
      const inside = inTransaction(db, () => withoutWaitingForDisk(db, () => level()));
      expect([inside, level()]).toEqual([2, 2]);
      // A commit that leaves its transaction open is rolled back, and the level comes back.
      expect(() =>
        withoutWaitingForDisk(db, () => {
          db.exec("BEGIN IMMEDIATE");
          db.prepare("INSERT INTO item VALUES ('left open')").run();
          throw new Error("no commit");
        }),
      ).toThrow("no commit");
      expect([db.isTransaction, level()]).toEqual([false, 2]);
      // The write is committed like any other: another connection reads it.
      const reader = new DatabaseSync(join(dir, "store.db"));
      expect(reader.prepare("SELECT label FROM item").all()).toEqual([{ label: "a" }]);
      reader.close();
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
