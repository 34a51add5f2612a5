/**
 * Versioned schema migrations, applied at start-up by each service for its own tables.
 *
 * Several processes of one service may start at once. Concurrent schema changes can leave a
 * multi-node cluster in schema disagreement, so one process at a time holds a lease (a lightweight
 * transaction on a row with a TTL, so a crashed holder's lease expires) while it applies what is
 * missing. Every statement must be idempotent (`IF NOT EXISTS`, additive `ALTER`s guarded by the
 * version record), because a holder that dies after a statement and before recording its
 * version leaves the next holder to run the migration again.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "../logging.ts";
import type { CassandraClient } from "./session.ts";
import { consistencies } from "./session.ts";

export interface Migration {
  /** 1, 2, 3…: applied in order, each once. */
  readonly version: number;
  readonly description: string;
  readonly statements: readonly string[];
}

const LEASE_TTL_SECONDS = 60;
/** Schema statements run once: preparing them only fills the server's log with warnings. */
const SCHEMA_CHANGE = { prepare: false } as const;

export async function applyMigrations(
  client: CassandraClient,
  component: string,
  migrations: readonly Migration[],
  logger: Logger,
): Promise<{ readonly applied: readonly number[] }> {
  assertOrdered(component, migrations);
  await client.execute(
    "CREATE TABLE IF NOT EXISTS schema_migrations (component text, version int, description text, applied_at timestamp, PRIMARY KEY (component, version))",
  );
  await client.execute(
    "CREATE TABLE IF NOT EXISTS schema_migration_lease (component text PRIMARY KEY, owner uuid)",
  );

  const appliedVersions = async () => {
    const rows = await client.execute(
      "SELECT version FROM schema_migrations WHERE component = ?",
      [component],
      { consistency: consistencies.localQuorum },
    );
    return new Set(rows.rows.map((row) => Number(row.get("version"))));
  };
  if (migrations.length === 0) return { applied: [] };
  const done = await appliedVersions();
  if (migrations.every((m) => done.has(m.version))) return { applied: [] };

  const owner = randomUUID();
  await acquireLease(client, component, owner, logger);
  const applied: number[] = [];
  try {
    const current = await appliedVersions();
    for (const migration of migrations) {
      if (current.has(migration.version)) continue;
      for (const statement of migration.statements) await client.execute(statement, [], SCHEMA_CHANGE);
      await client.execute(
        "INSERT INTO schema_migrations (component, version, description, applied_at) VALUES (?, ?, ?, ?)",
        [component, migration.version, migration.description, new Date()],
      );
      applied.push(migration.version);
      logger.info({ component, version: migration.version }, `applied migration: ${migration.description}`);
    }
  } finally {
    await client
      .execute("DELETE FROM schema_migration_lease WHERE component = ? IF owner = ?", [component, owner])
      .catch((err: unknown) =>
        logger.warn({ err, component }, "could not release the migration lease; it expires"),
      );
  }
  return { applied };
}

async function acquireLease(client: CassandraClient, component: string, owner: string, logger: Logger) {
  const deadline = Date.now() + 3 * LEASE_TTL_SECONDS * 1000;
  for (let attempt = 0; ; attempt++) {
    const result = await client.execute(
      `INSERT INTO schema_migration_lease (component, owner) VALUES (?, ?) IF NOT EXISTS USING TTL ${LEASE_TTL_SECONDS}`,
      [component, owner],
    );
    if (result.wasApplied()) return;
    if (Date.now() > deadline) {
      throw new Error(
        `another process has held the ${component} schema migration lease for minutes; giving up`,
      );
    }
    if (attempt === 0) logger.info({ component }, "waiting for another process to finish migrating");
    await new Promise((resolve) => setTimeout(resolve, 250 + Math.random() * 250));
  }
}

function assertOrdered(component: string, migrations: readonly Migration[]) {
  migrations.forEach((migration, index) => {
    if (migration.version !== index + 1) {
      throw new Error(
        `${component} migrations must be numbered 1, 2, 3… in order; found ${migration.version} at ${index + 1}`,
      );
    }
  });
}
