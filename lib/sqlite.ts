import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";

/**
 * Opens the embedded profile's SQLite file (node:sqlite). WAL lets readers run beside the one
 * writer, `synchronous = FULL` makes a committed transaction survive a power cut or SIGKILL (the
 * embedded profile promises the same durability as the engines it stands in for), and the busy
 * timeout lets several services' connections to one file wait for each other instead of failing.
 */
export function openSqlite(path: string): DatabaseSync {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = FULL");
  db.exec("PRAGMA foreign_keys = ON");
  db.exec("PRAGMA busy_timeout = 5000");
  return db;
}

/** schema_migrations' definition: `migrate` creates it, `copyOwnedTables` too in a new file. */
const SCHEMA_MIGRATIONS_COLUMNS =
  "(owner TEXT NOT NULL, version INTEGER NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (owner, version))";

/**
 * Applies `migrations` (SQL scripts, in order, never edited once released) that `owner` has not
 * applied yet, each in its own transaction. Each service names itself as owner, so services sharing
 * the file keep separate schema histories.
 */
export function migrate(db: DatabaseSync, owner: string, migrations: readonly string[]): void {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations ${SCHEMA_MIGRATIONS_COLUMNS}`);
  const applied = db.prepare(
    "SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations WHERE owner = ?",
  );
  const record = db.prepare("INSERT INTO schema_migrations (owner, version, applied_at) VALUES (?, ?, ?)");
  const current = Number((applied.get(owner) as { version: number }).version);
  for (let version = current + 1; version <= migrations.length; version++) {
    inTransaction(db, () => {
      db.exec(migrations[version - 1] as string);
      record.run(owner, version, new Date().toISOString());
    });
  }
}

/** Runs `work` in a write transaction (BEGIN IMMEDIATE, so it never fails half-way on a lock upgrade). */
export function inTransaction<T>(db: DatabaseSync, work: () => T): T {
  db.exec("BEGIN IMMEDIATE");
  try {
    const result = work();
    db.exec("COMMIT");
    return result;
  } catch (err) {
    db.exec("ROLLBACK");
    throw err;
  }
}

/** Each connection's own `synchronous` level, read once (FULL as opened, unless a test or bench changed it). */
const syncLevels = new WeakMap<DatabaseSync, number>();

/**
 * Runs `commit` (a whole transaction) without making it wait for the disk: `synchronous = NORMAL`
 * for its COMMIT, then the connection's own level again. Only for writes whose loss on a power cut
 * merely repeats work that tolerates repeats: an outbox row deleted once its event was published
 * (the event is published again), a broker acknowledgement (the message is delivered again). In
 * WAL mode such a commit is still atomic and in order: it survives a crash of the process (the
 * operating system holds the WAL), and it is made durable by the next synced commit of any
 * connection to the file, since that fsync covers the whole WAL up to it. At 10 or more commits
 * per message, each fsync blocking the event loop, skipping the harmless ones matters.
 */
export function withoutWaitingForDisk<T>(db: DatabaseSync, commit: () => T): T {
  let level = syncLevels.get(db);
  if (level === undefined) {
    level = Number((db.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous);
    syncLevels.set(db, level);
  }
  // Already NORMAL (1) or OFF (0); or inside a transaction, where SQLite refuses the change.
  if (level <= 1 || db.isTransaction) return commit();
  db.exec("PRAGMA synchronous = NORMAL");
  try {
    return commit();
  } finally {
    // A commit that left its transaction open would keep the connection's level from coming back.
    if (db.isTransaction) db.exec("ROLLBACK");
    db.exec(`PRAGMA synchronous = ${level}`);
  }
}

/** Runs writes of one store in shared transactions: see `createGroupCommit`. */
export interface GroupCommit {
  /**
   * Queues `work` for the next shared transaction and resolves with its result once that
   * transaction is committed (so durably, under `synchronous = FULL`). A work that throws is rolled
   * back alone and its promise rejects; the others of its transaction still commit.
   *
   * `waitForDisk: false` is for writes whose loss on a power cut only repeats work that tolerates
   * repeats (see `withoutWaitingForDisk`): a transaction made of such writes alone commits without
   * an fsync and is made durable by the next one that waits. It is still answered only once
   * committed, so it survives a crash of the process.
   */
  run<T>(work: () => T, options?: { readonly waitForDisk?: boolean }): Promise<T>;
  /** Commits what is queued now, before the database is closed. */
  flushNow(): void;
}

type QueuedWork = {
  readonly work: () => unknown;
  readonly waitForDisk: boolean;
  readonly resolve: (value: unknown) => void;
  readonly reject: (reason: unknown) => void;
};

/**
 * Group commit for a store whose writes arrive in bursts (a 1,000-member group's acknowledgements):
 * the writes queued while the event loop is busy run in one BEGIN IMMEDIATE ... COMMIT, one fsync
 * for all of them instead of one each, each inside its own SAVEPOINT so a failing one undoes only
 * itself. Callers get their result only after the COMMIT, exactly as with `inTransaction`, so
 * nothing is acknowledged before it is durable; the price is waiting for the end of the current
 * event-loop turn. So that one flush cannot hold the event loop for long, a transaction takes at
 * most `maxBatch` writes (1,024: one RecordAcknowledgements call's acks, ~70 ms of work on this
 * machine; 256 made four commits of them, whose WAL writes and fsyncs cost a 5,000-device group
 * send ~100 ms more, tools/bench/history-store-fanout.ts) and no further write once `maxBatchMs`
 * (100 ms) have passed (one 5,000-device group message alone takes ~100 ms; with 50 ms a
 * burst's acks took twice the commits and lost most of the gain: 533-541 against 368-388 ms).
 */
export function createGroupCommit(
  db: DatabaseSync,
  options: {
    readonly maxBatch?: number;
    /** After this long, the transaction takes no further write (checked after each write). */
    readonly maxBatchMs?: number;
    readonly now?: () => number;
  } = {},
): GroupCommit {
  const maxBatch = options.maxBatch ?? 1024;
  // Writes are not all alike: one 5,000-device group message takes ~100 ms, an ack ~0.1 ms.
  const maxBatchMs = options.maxBatchMs ?? 100;
  const now = options.now ?? (() => performance.now());
  let queue: QueuedWork[] = [];
  let scheduled = false;

  const flush = () => {
    scheduled = false;
    const batch = queue.length > maxBatch ? queue.splice(0, maxBatch) : queue;
    if (batch === queue) queue = [];
    if (queue.length > 0) schedule();
    if (batch.length === 0) return; // flushNow took them
    try {
      if (batch.some((item) => item.waitForDisk)) runTransaction(batch);
      else withoutWaitingForDisk(db, () => runTransaction(batch));
    } catch (error) {
      // Switching `synchronous` failed: no caller may wait forever (settled ones ignore this).
      for (const item of batch) item.reject(error);
    }
  };

  const runTransaction = (batch: QueuedWork[]) => {
    const outcomes: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
    try {
      db.exec("BEGIN IMMEDIATE");
    } catch (error) {
      for (const item of batch) item.reject(error);
      return;
    }
    const started = now();
    try {
      for (let i = 0; i < batch.length; i++) {
        const item = batch[i] as QueuedWork;
        if (i > 0 && now() - started >= maxBatchMs) {
          // The rest waits for the next transaction, ahead of anything queued since.
          queue.unshift(...batch.splice(i));
          schedule();
          break;
        }
        db.exec("SAVEPOINT group_commit_work");
        try {
          outcomes.push({ ok: true, value: item.work() });
          db.exec("RELEASE group_commit_work");
        } catch (error) {
          try {
            db.exec("ROLLBACK TO group_commit_work");
            db.exec("RELEASE group_commit_work");
          } catch {
            // SQLite ended the whole transaction (disk full, I/O error): fail the batch with the
            // write's own error, not the missing savepoint's.
            throw error;
          }
          outcomes.push({ ok: false, error });
        }
      }
      db.exec("COMMIT");
    } catch (error) {
      // The transaction itself failed (COMMIT, or a savepoint statement): nothing of it is kept.
      try {
        if (db.isTransaction) db.exec("ROLLBACK");
      } catch {
        // Already rolled back by SQLite; the callers get the error that ended it.
      }
      for (const item of batch) item.reject(error);
      return;
    }
    batch.forEach((item, i) => {
      const outcome = outcomes[i] as (typeof outcomes)[number];
      if (outcome.ok) item.resolve(outcome.value);
      else item.reject(outcome.error);
    });
  };

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    setImmediate(flush);
  }

  return {
    run<T>(work: () => T, runOptions?: { readonly waitForDisk?: boolean }): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        const waitForDisk = runOptions?.waitForDisk ?? true;
        queue.push({ work, waitForDisk, resolve: resolve as (value: unknown) => void, reject });
        schedule();
      });
    },
    flushNow() {
      while (queue.length > 0) flush();
    },
  };
}

/** One owner's tables leaving one SQLite file for another: see `moveOwnedTables`. */
export interface OwnedTablesMove {
  /** The file the tables leave. Never created: nothing to move when it does not exist. */
  readonly fromPath: string;
  /** The file they go to, created when something is to be moved. */
  readonly toPath: string;
  /** The owner whose `schema_migrations` rows go with the tables (as `migrate` records them). */
  readonly owner: string;
  /** Every table whose name starts with it moves, with its indexes and triggers. */
  readonly tablePrefix: string;
}

/**
 * Moves `owner`'s tables (every table named `tablePrefix...`, with its rows, indexes, triggers and
 * AUTOINCREMENT counter) and its `schema_migrations` rows from the file at `fromPath` to the file
 * at `toPath`, in two steps that each commit or leave nothing, so a crash anywhere is finished by
 * calling it again:
 * 1. `copyOwnedTables`: everything is copied into the destination in one transaction, unless the
 *    destination has the owner's tables or migrations already (the copy committed before a crash,
 *    or a fresh install that never used the source): then it never copies again;
 * 2. `dropCopiedTables`: once the destination has them, the source's copies are dropped and the
 *    owner's migrations there deleted, in one transaction.
 * SQLite commits a transaction over several WAL files file by file, not atomically, hence the two
 * transactions, each writing one file, in this order. Nothing may write the owner's tables in the
 * source meanwhile or afterwards (its service must run on the new file only): the second step, and
 * any later call, drops whatever is there. Returns the tables no longer in the source (`moved`)
 * and those whose rows this call copied (`copied`: empty when it only finished an earlier move).
 */
export function moveOwnedTables(move: OwnedTablesMove): {
  readonly moved: readonly string[];
  readonly copied: readonly string[];
} {
  const copied = copyOwnedTables(move);
  return { moved: dropCopiedTables(move), copied };
}

/**
 * The first step of `moveOwnedTables`: copies the owner's tables, rows, indexes, triggers,
 * AUTOINCREMENT counters and migrations into `toPath` in one transaction, unless it has them
 * already. Returns the tables copied.
 */
export function copyOwnedTables(move: OwnedTablesMove): readonly string[] {
  const prefix = checkedPrefix(move.tablePrefix);
  if (!existsSync(move.fromPath)) return [];
  // A look first, so that a source without the owner's tables (every start-up after the move)
  // creates no destination file.
  const source = openSqlite(move.fromPath);
  try {
    if (ownedTables(source, "main", prefix).length === 0) return [];
  } finally {
    source.close();
  }
  const destination = openSqlite(move.toPath);
  try {
    // Rows are copied as they are: checking them would only refuse a move over violations the
    // source already holds (`checkForeignKeyBoundary` makes sure no reference leaves the tables).
    destination.exec("PRAGMA foreign_keys = OFF");
    destination.exec(`CREATE TABLE IF NOT EXISTS main.schema_migrations ${SCHEMA_MIGRATIONS_COLUMNS}`);
    // ATTACH cannot run inside a transaction, and has no read-only mode here (node:sqlite opens
    // files without URI support): the existence check above is what keeps it from creating one.
    destination.prepare("ATTACH DATABASE ? AS source").run(move.fromPath);
    // Not BEGIN IMMEDIATE: that takes the write lock of every attached file, and would stall
    // every other writer of the source (other services' tables) for the whole copy. A deferred
    // transaction whose first statement writes to main locks main only, and its read of the
    // source is one snapshot, taken without a lock.
    destination.exec("BEGIN");
    try {
      destination.exec("DELETE FROM main.schema_migrations WHERE 0"); // main's write lock, now
      const tables = ownedTables(destination, "source", prefix);
      // Copied already, or dropped from the source since the look above (by a concurrent move).
      if (tables.length === 0 || ownsTables(destination, move.owner, prefix)) {
        destination.exec("ROLLBACK");
        return [];
      }
      checkForeignKeyBoundary(destination, "source", tables);
      const hasSequences = tableExists(destination, "source", "sqlite_sequence");
      for (const { name, sql } of tables) {
        if (/^CREATE\s+VIRTUAL\b/i.test(sql)) throw new Error(`cannot move virtual table ${name}`);
        // sqlite_master keeps the CREATE statement without its schema name: it creates in main.
        destination.exec(sql);
        const columns = (
          destination
            .prepare("SELECT name FROM pragma_table_xinfo(?, 'source') WHERE hidden = 0 ORDER BY cid")
            .all(name) as { name: string }[]
        )
          .map((column) => quoted(column.name))
          .join(", ");
        destination.exec(
          `INSERT INTO main.${quoted(name)} (${columns}) SELECT ${columns} FROM source.${quoted(name)}`,
        );
        // An AUTOINCREMENT table's counter would otherwise restart at its highest row left, and
        // hand out again the ids of rows already deleted (an outbox's published events).
        if (hasSequences) {
          const sequence = destination
            .prepare("SELECT seq FROM source.sqlite_sequence WHERE name = ?")
            .get(name) as { seq: number } | undefined;
          if (sequence !== undefined) {
            destination.prepare("DELETE FROM main.sqlite_sequence WHERE name = ?").run(name);
            destination
              .prepare("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)")
              .run(name, sequence.seq);
          }
        }
      }
      // After the rows: an index is built in one pass, and triggers must not fire on the copy.
      // Indexes SQLite made for UNIQUE and PRIMARY KEY constraints (no sql) came with the tables.
      const names = tables.map((table) => table.name);
      const dependents = destination
        .prepare(
          `SELECT sql FROM source.sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
             AND tbl_name IN (SELECT value FROM json_each(?)) ORDER BY type, name`,
        )
        .all(JSON.stringify(names)) as { sql: string }[];
      for (const { sql } of dependents) destination.exec(sql);
      if (tableExists(destination, "source", "schema_migrations")) {
        destination
          .prepare(
            "INSERT INTO main.schema_migrations (owner, version, applied_at) SELECT owner, version, applied_at FROM source.schema_migrations WHERE owner = ?",
          )
          .run(move.owner);
      }
      destination.exec("COMMIT");
      return names;
    } catch (err) {
      if (destination.isTransaction) destination.exec("ROLLBACK");
      throw err;
    }
  } finally {
    destination.close();
  }
}

/**
 * The second step of `moveOwnedTables`: once `toPath` has the owner's tables or migrations, drops
 * the owner's tables from `fromPath` and deletes its migrations there, in one transaction. Does
 * nothing while the destination has neither, so a source is never emptied before its copy
 * committed. Returns the tables dropped.
 */
export function dropCopiedTables(move: OwnedTablesMove): readonly string[] {
  const prefix = checkedPrefix(move.tablePrefix);
  if (!existsSync(move.fromPath) || !existsSync(move.toPath)) return [];
  const source = openSqlite(move.fromPath);
  try {
    const leftovers = () =>
      ownedTables(source, "main", prefix).length > 0 ||
      (tableExists(source, "main", "schema_migrations") &&
        source.prepare("SELECT 1 FROM schema_migrations WHERE owner = ? LIMIT 1").get(move.owner) !==
          undefined);
    // Most calls find nothing: they take no write lock on the source.
    if (!leftovers()) return [];
    const destination = openSqlite(move.toPath);
    try {
      if (!ownsTables(destination, move.owner, prefix)) return [];
    } finally {
      destination.close();
    }
    // Set outside the transaction (SQLite ignores it inside): dropping tables that refer to each
    // other must not depend on their order.
    source.exec("PRAGMA foreign_keys = OFF");
    return inTransaction(source, () => {
      const tables = ownedTables(source, "main", prefix);
      checkForeignKeyBoundary(source, "main", tables);
      for (const { name } of tables) source.exec(`DROP TABLE main.${quoted(name)}`);
      if (tableExists(source, "main", "schema_migrations")) {
        source.prepare("DELETE FROM schema_migrations WHERE owner = ?").run(move.owner);
      }
      return tables.map((table) => table.name);
    });
  } finally {
    source.close();
  }
}

function checkedPrefix(prefix: string): string {
  // An empty prefix would take every table; sqlite_ names are SQLite's own.
  if (prefix === "" || prefix.toLowerCase().startsWith("sqlite_")) {
    throw new Error(`invalid table prefix "${prefix}"`);
  }
  return prefix;
}

/** The tables of `schema` named `prefix...` (compared exactly: LIKE would read `_` as a wildcard). */
function ownedTables(
  db: DatabaseSync,
  schema: "main" | "source",
  prefix: string,
): { readonly name: string; readonly sql: string }[] {
  return db
    .prepare(
      `SELECT name, sql FROM ${schema}.sqlite_master
        WHERE type = 'table' AND substr(name, 1, length(?1)) = ?1 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
        ORDER BY name`,
    )
    .all(prefix) as { name: string; sql: string }[];
}

/** Whether main has the owner's migrations or any of its tables: a copy committed there. */
function ownsTables(db: DatabaseSync, owner: string, prefix: string): boolean {
  if (ownedTables(db, "main", prefix).length > 0) return true;
  return (
    tableExists(db, "main", "schema_migrations") &&
    db.prepare("SELECT 1 FROM main.schema_migrations WHERE owner = ? LIMIT 1").get(owner) !== undefined
  );
}

function tableExists(db: DatabaseSync, schema: "main" | "source", name: string): boolean {
  return (
    db.prepare(`SELECT 1 FROM ${schema}.sqlite_master WHERE type = 'table' AND name = ?`).get(name) !==
    undefined
  );
}

/**
 * Refuses a move that would cut a foreign key: one of a staying table to a moving one, or of a
 * moving one to a staying one (in its new file it would refer to a table that is not there).
 */
function checkForeignKeyBoundary(
  db: DatabaseSync,
  schema: "main" | "source",
  moving: readonly { readonly name: string }[],
): void {
  const names = new Set(moving.map((table) => table.name.toLowerCase()));
  const references = db
    .prepare(
      `SELECT m.name AS child, f."table" AS parent
         FROM ${schema}.sqlite_master AS m, pragma_foreign_key_list(m.name, '${schema}') AS f
        WHERE m.type = 'table'`,
    )
    .all() as { child: string; parent: string }[];
  for (const { child, parent } of references) {
    if (names.has(child.toLowerCase()) !== names.has(parent.toLowerCase())) {
      throw new Error(`cannot move: foreign key of ${child} to ${parent} would cross files`);
    }
  }
}

function quoted(identifier: string): string {
  return `"${identifier.replaceAll('"', '""')}"`;
}
