import { mkdirSync } from "node:fs";
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

/**
 * Applies `migrations` (SQL scripts, in order, never edited once released) that `owner` has not
 * applied yet, each in its own transaction. Each service names itself as owner, so services sharing
 * the file keep separate schema histories.
 */
export function migrate(db: DatabaseSync, owner: string, migrations: readonly string[]): void {
  db.exec(
    "CREATE TABLE IF NOT EXISTS schema_migrations (owner TEXT NOT NULL, version INTEGER NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (owner, version))",
  );
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
   */
  run<T>(work: () => T): Promise<T>;
  /** Commits what is queued now, before the database is closed. */
  flushNow(): void;
}

type QueuedWork = {
  readonly work: () => unknown;
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
    run<T>(work: () => T): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        queue.push({ work, resolve: resolve as (value: unknown) => void, reject });
        schedule();
      });
    },
    flushNow() {
      while (queue.length > 0) flush();
    },
  };
}
