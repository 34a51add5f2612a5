import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  copyOwnedTables,
  createGroupCommit,
  dropCopiedTables,
  inTransaction,
  migrate,
  moveOwnedTables,
  openSqlite,
  withoutWaitingForDisk,
} from "./sqlite.ts";

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

  it("commits a transaction of writes that need not wait for the disk without an fsync, any other with one", async () => {
    const group = createGroupCommit(db);
    const level = () =>
      Number((db.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous);
    const lazyOnly = await Promise.all([
      group.run(() => [insert("a")(), level()], { waitForDisk: false }),
      group.run(() => [insert("b")(), level()], { waitForDisk: false }),
    ]);
    expect(lazyOnly.map(([, sync]) => sync)).toEqual([1, 1]); // NORMAL for the whole transaction
    const mixed = await Promise.all([
      group.run(() => level(), { waitForDisk: false }),
      group.run(() => level()),
    ]);
    expect(mixed).toEqual([2, 2]); // one write that must wait makes the commit wait (FULL)
    expect(level()).toBe(2);
    expect(committedLabels()).toEqual(["a", "b"]);
    // A failing write among them is rolled back alone, as in any transaction.
    const outcomes = await Promise.allSettled([
      group.run(insert("a"), { waitForDisk: false }),
      group.run(insert("c"), { waitForDisk: false }),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "fulfilled"]);
    expect([committedLabels(), level(), db.isTransaction]).toEqual([["a", "b", "c"], 2, false]);
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

describe("moveOwnedTables", () => {
  let dir: string;
  let fromPath: string;
  let toPath: string;
  let move: { fromPath: string; toPath: string; owner: string; tablePrefix: string };

  // Owner "chat": an AUTOINCREMENT table with a unique and a partial index, a column added later,
  // a WITHOUT ROWID table, a UNIQUE constraint (SQLite's own index, without sql) and a trigger. Owner "key" shares the file, and its "chatxrooms" starts
  // with "chat" and a character that LIKE's `_` would match.
  const CHAT_MIGRATIONS = [
    `CREATE TABLE chat_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL, body TEXT NOT NULL);
     CREATE UNIQUE INDEX chat_messages_by_client ON chat_messages (client_id);
     CREATE INDEX chat_messages_by_body ON chat_messages (body) WHERE body <> '';
     CREATE TABLE chat_log (message_id INTEGER NOT NULL UNIQUE);
     CREATE TRIGGER chat_messages_logged AFTER INSERT ON chat_messages
       BEGIN INSERT INTO chat_log (message_id) VALUES (new.id); END;`,
    `ALTER TABLE chat_messages ADD COLUMN sent_at INTEGER;
     CREATE TABLE chat_members (conversation TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (conversation, user)) WITHOUT ROWID;`,
  ];
  const CHAT_TABLES = ["chat_log", "chat_members", "chat_messages"];
  const KEY_MIGRATIONS = [
    `CREATE TABLE key_devices (id TEXT PRIMARY KEY, user TEXT NOT NULL);
     CREATE INDEX key_devices_by_user ON key_devices (user);
     CREATE TABLE chatxrooms (id TEXT PRIMARY KEY);`,
  ];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "parley-move-tables-"));
    fromPath = join(dir, "parley.db");
    toPath = join(dir, "chat.db");
    move = { fromPath, toPath, owner: "chat", tablePrefix: "chat_" };
    const db = openSqlite(fromPath);
    migrate(db, "key", KEY_MIGRATIONS);
    migrate(db, "chat", CHAT_MIGRATIONS);
    const send = db.prepare("INSERT INTO chat_messages (client_id, body, sent_at) VALUES (?, ?, ?)");
    send.run("c1", "hello", 1);
    send.run("c2", "", 2);
    send.run("c3", "gone", 3);
    db.exec("DELETE FROM chat_messages WHERE client_id = 'c3'"); // the AUTOINCREMENT counter stays at 3
    db.exec("INSERT INTO chat_members VALUES ('room', 'alice'), ('room', 'bob')");
    db.exec("INSERT INTO key_devices VALUES ('d1', 'alice'); INSERT INTO chatxrooms VALUES ('r1')");
    db.close();
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** What a test reads from a file, through its own connection (so only what is committed). */
  function read<T>(path: string, query: (db: DatabaseSync) => T): T {
    const db = new DatabaseSync(path);
    try {
      return query(db);
    } finally {
      db.close();
    }
  }
  const schema = (path: string, prefix: string) =>
    read(path, (db) =>
      db
        .prepare(
          "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE substr(tbl_name, 1, length(?1)) = ?1 ORDER BY type, name",
        )
        .all(prefix),
    );
  const rows = (path: string, table: string) =>
    read(path, (db) =>
      db
        .prepare(`SELECT * FROM ${table}`)
        .all()
        .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
    );
  const migrations = (path: string) =>
    read(path, (db) => db.prepare("SELECT * FROM schema_migrations ORDER BY owner, version").all());
  const tables = (path: string) =>
    read(path, (db) =>
      (
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as {
          name: string;
        }[]
      ).map((row) => row.name),
    );
  /** The source once chat's tables left: SQLite keeps sqlite_sequence, emptied of their rows. */
  const sourceLeft = () => {
    expect(tables(fromPath)).toEqual(["chatxrooms", "key_devices", "schema_migrations", "sqlite_sequence"]);
    expect(rows(fromPath, "sqlite_sequence")).toEqual([]);
    expect(schema(fromPath, "chat_")).toEqual([]);
    expect((migrations(fromPath) as { owner: string }[]).map((row) => row.owner)).toEqual(["key"]);
  };
  const snapshot = (path: string) => ({
    schema: schema(path, "chat_"),
    rows: CHAT_TABLES.map((table) => rows(path, table)),
    migrations: (migrations(path) as { owner: string }[]).filter((row) => row.owner === "chat"),
  });

  it("moves the owner's tables with their rows, indexes, trigger, counter and migrations, and only those", () => {
    const before = snapshot(fromPath);
    const keyBefore = { schema: schema(fromPath, "key_"), rows: rows(fromPath, "key_devices") };
    expect(before.rows.map((r) => r.length)).toEqual([3, 2, 2]);

    expect(moveOwnedTables(move)).toEqual({ moved: CHAT_TABLES, copied: CHAT_TABLES });

    // Same CREATE statements (the ALTERed column included), the constraints' own indexes too.
    const after = snapshot(toPath);
    expect(after).toEqual(before);
    expect((after.schema as { name: string }[]).map((entry) => entry.name)).toEqual([
      "chat_messages_by_body",
      "chat_messages_by_client",
      "sqlite_autoindex_chat_log_1",
      "chat_log",
      "chat_members",
      "chat_messages",
      "chat_messages_logged",
    ]);
    expect(tables(toPath)).toEqual([...CHAT_TABLES, "schema_migrations", "sqlite_sequence"]);

    const db = openSqlite(toPath);
    try {
      expect(() =>
        db.prepare("INSERT INTO chat_messages (client_id, body) VALUES ('c1', 'again')").run(),
      ).toThrow(/UNIQUE/);
      expect(() => db.prepare("INSERT INTO chat_members VALUES ('room', 'bob')").run()).toThrow(/UNIQUE/);
      expect(() => db.prepare("INSERT INTO chat_log VALUES (1)").run()).toThrow(/UNIQUE/);
      // The counter came along (id 3 is not handed out again), and the trigger works there.
      expect(
        db.prepare("INSERT INTO chat_messages (client_id, body) VALUES ('c4', 'new')").run().lastInsertRowid,
      ).toBe(4);
      expect(db.prepare("SELECT message_id FROM chat_log ORDER BY 1").all()).toEqual([
        { message_id: 1 },
        { message_id: 2 },
        { message_id: 3 },
        { message_id: 4 },
      ]);
    } finally {
      db.close();
    }

    // The source keeps everything else, untouched.
    sourceLeft();
    expect(schema(fromPath, "key_")).toEqual(keyBefore.schema);
    expect(rows(fromPath, "key_devices")).toEqual(keyBefore.rows);
    expect(rows(fromPath, "chatxrooms")).toEqual([{ id: "r1" }]);
  });

  it("is harmless to run again", () => {
    const before = snapshot(fromPath);
    moveOwnedTables(move);
    expect(moveOwnedTables(move)).toEqual({ moved: [], copied: [] });
    expect(snapshot(toPath)).toEqual(before);
    sourceLeft();
  });

  it("finishes a move whose copy committed before a crash, without copying again", () => {
    const before = snapshot(fromPath);
    // The second step alone never empties a source whose copy did not commit.
    read(toPath, (db) => db.exec("CREATE TABLE other (x)"));
    expect(dropCopiedTables(move)).toEqual([]);
    expect(snapshot(fromPath)).toEqual(before);
    // The crash: the first step committed, the source was never emptied.
    expect(copyOwnedTables(move)).toEqual(CHAT_TABLES);
    expect(snapshot(fromPath)).toEqual(before);
    expect(snapshot(toPath)).toEqual(before);

    expect(moveOwnedTables(move)).toEqual({ moved: CHAT_TABLES, copied: [] });
    expect(snapshot(toPath)).toEqual(before);
    sourceLeft();
  });

  it("keeps nothing of a copy that failed half-way, and leaves the source as it was", () => {
    const before = snapshot(fromPath);
    // An index of that name elsewhere in the destination: the copy fails at the indexes, after
    // the tables and rows.
    const blocker = openSqlite(toPath);
    blocker.exec("CREATE TABLE other (x); CREATE INDEX chat_messages_by_client ON other (x)");
    blocker.close();
    expect(() => moveOwnedTables(move)).toThrow(/already exists/);
    expect(tables(toPath)).toEqual(["other", "schema_migrations"]);
    expect(migrations(toPath)).toEqual([]);
    expect(snapshot(fromPath)).toEqual(before);

    read(toPath, (db) => db.exec("DROP INDEX chat_messages_by_client"));
    expect(moveOwnedTables(move)).toEqual({ moved: CHAT_TABLES, copied: CHAT_TABLES });
    expect(snapshot(toPath)).toEqual(before);
  });

  it("only drops the source's leftovers when the destination has the owner's migrations already", () => {
    const db = openSqlite(toPath);
    migrate(db, "chat", CHAT_MIGRATIONS);
    db.exec("INSERT INTO chat_messages (client_id, body) VALUES ('fresh', 'only here')");
    db.close();
    const destination = snapshot(toPath);

    expect(moveOwnedTables(move)).toEqual({ moved: CHAT_TABLES, copied: [] });
    expect(snapshot(toPath)).toEqual(destination);
    expect(rows(toPath, "chat_messages")).toEqual([
      { id: 1, client_id: "fresh", body: "only here", sent_at: null },
    ]);
    sourceLeft();
  });

  it("creates neither file when the source does not exist or holds none of the owner's tables", () => {
    const missing = { ...move, fromPath: join(dir, "missing", "parley.db"), toPath: join(dir, "new.db") };
    expect(moveOwnedTables(missing)).toEqual({ moved: [], copied: [] });
    expect(existsSync(missing.fromPath)).toBe(false);
    expect(existsSync(join(dir, "missing"))).toBe(false);
    expect(existsSync(missing.toPath)).toBe(false);

    const nothingOwned = { ...move, owner: "history", tablePrefix: "history_", toPath: join(dir, "new.db") };
    expect(moveOwnedTables(nothingOwned)).toEqual({ moved: [], copied: [] });
    expect(existsSync(nothingOwned.toPath)).toBe(false);
  });

  it("moves tables that refer to each other with foreign keys on, and refuses to cut a reference", () => {
    const db = openSqlite(fromPath); // foreign_keys = ON
    db.exec(`CREATE TABLE chat_rooms (id TEXT PRIMARY KEY);
             CREATE TABLE chat_invites (room TEXT NOT NULL REFERENCES chat_rooms (id), user TEXT NOT NULL);
             CREATE TABLE chat_topics (room TEXT NOT NULL REFERENCES chat_rooms (id), topic TEXT NOT NULL);
             INSERT INTO chat_rooms VALUES ('room'); INSERT INTO chat_invites VALUES ('room', 'carol');
             INSERT INTO chat_topics VALUES ('room', 'news');
             CREATE TABLE key_grants (room TEXT REFERENCES chat_rooms (id));`);
    db.close();
    // key_grants stays and refers to chat_rooms, which would leave.
    expect(() => moveOwnedTables(move)).toThrow(/foreign key of key_grants to chat_rooms/);
    expect(existsSync(toPath)).toBe(true); // created by the look, but holding nothing of chat's
    expect(tables(toPath)).toEqual(["schema_migrations"]);
    expect(tables(fromPath)).toContain("chat_rooms");

    read(fromPath, (other) => other.exec("DROP TABLE key_grants"));
    // Tables go in name order: chat_invites' rows are copied before their parent's, and
    // chat_rooms is dropped while chat_topics still refers to it.
    expect(moveOwnedTables(move).moved).toEqual([
      "chat_invites",
      "chat_log",
      "chat_members",
      "chat_messages",
      "chat_rooms",
      "chat_topics",
    ]);
    expect(rows(toPath, "chat_topics")).toEqual([{ room: "room", topic: "news" }]);
    expect(tables(fromPath)).toEqual(["chatxrooms", "key_devices", "schema_migrations", "sqlite_sequence"]);
    const moved = openSqlite(toPath);
    try {
      expect(moved.prepare("PRAGMA foreign_key_check").all()).toEqual([]);
      expect(() => moved.prepare("INSERT INTO chat_invites VALUES ('nowhere', 'dave')").run()).toThrow(
        /FOREIGN KEY/,
      );
    } finally {
      moved.close();
    }
  });
});
