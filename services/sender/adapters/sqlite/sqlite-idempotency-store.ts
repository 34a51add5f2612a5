import type { DatabaseSync } from "node:sqlite";
import { createGroupCommit, migrate, openSqlite } from "../../../../lib/sqlite.ts";
import type { AcceptedRecord, IdempotencyStore } from "../../domain/ports.ts";

const MIGRATIONS = [
  `CREATE TABLE sender_idempotency (
     key TEXT PRIMARY KEY,
     message_id TEXT NOT NULL,
     content_digest TEXT NOT NULL,
     accepted_at INTEGER NOT NULL,
     published INTEGER NOT NULL,
     expires_at INTEGER NOT NULL
   ) WITHOUT ROWID;
   CREATE INDEX sender_idempotency_expiry ON sender_idempotency (expires_at);`,
];

/**
 * Idempotency keys in the embedded profile's SQLite file, so a retry after the process was killed
 * still gets the message's first id (the cluster keeps them in Redis). Keys expire after `ttlMs`
 * (default 24 h, far beyond any client's retry window); a sweep removes them. A surge of sends
 * reserves and marks its keys in shared transactions (`createGroupCommit`): at most one fsync per
 * event-loop turn instead of two per message, each answered only once committed.
 */
export function createSqliteIdempotencyStore(options: {
  readonly path?: string;
  readonly db?: DatabaseSync;
  readonly ttlMs?: number;
  readonly now?: () => number;
}): IdempotencyStore & { close(): void } {
  const db = options.db ?? openSqlite(options.path ?? ":memory:");
  const ownsDb = options.db === undefined;
  migrate(db, "sender", MIGRATIONS);
  const ttlMs = options.ttlMs ?? 24 * 60 * 60 * 1000;
  const now = options.now ?? Date.now;
  const select = db.prepare(
    "SELECT message_id, content_digest, accepted_at, published FROM sender_idempotency WHERE key = ? AND expires_at > ?",
  );
  // An expired row is replaced; a live one is kept (the first reservation wins).
  const insert = db.prepare(
    `INSERT INTO sender_idempotency (key, message_id, content_digest, accepted_at, published, expires_at)
     VALUES (?, ?, ?, ?, ?, ?)
     ON CONFLICT (key) DO UPDATE SET message_id = excluded.message_id, content_digest = excluded.content_digest,
       accepted_at = excluded.accepted_at, published = excluded.published, expires_at = excluded.expires_at
     WHERE sender_idempotency.expires_at <= ?`,
  );
  const publish = db.prepare("UPDATE sender_idempotency SET published = 1 WHERE key = ?");
  const sweep = db.prepare("DELETE FROM sender_idempotency WHERE expires_at <= ?");
  const groupCommit = createGroupCommit(db);
  const timer = setInterval(() => sweep.run(now()), Math.min(ttlMs, 60_000));
  timer.unref();

  const read = (key: string): AcceptedRecord | undefined => {
    const row = select.get(key, now());
    if (row === undefined) return undefined;
    return {
      messageId: String(row.message_id),
      contentDigest: String(row.content_digest),
      acceptedAt: new Date(Number(row.accepted_at)),
      published: Number(row.published) === 1,
    };
  };

  return {
    async get(key) {
      return read(key);
    },
    reserve(key, record) {
      return groupCommit.run(() => {
        const t = now();
        insert.run(
          key,
          record.messageId,
          record.contentDigest,
          record.acceptedAt.getTime(),
          record.published ? 1 : 0,
          t + ttlMs,
          t,
        );
        return read(key) ?? record;
      });
    },
    async markPublished(key) {
      // Lost on a power cut, the mark only makes a retry publish the message again under its
      // reserved id, which history's unique message id absorbs (a crash between the publish and
      // this mark already does so). So it does not wait for the disk: the next reservation's
      // commit makes it durable, and at S1's rates that halves this file's fsyncs.
      await groupCommit.run(() => publish.run(key), { waitForDisk: false });
    },
    close() {
      clearInterval(timer);
      groupCommit.flushNow();
      if (ownsDb) db.close();
    },
  };
}
