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
