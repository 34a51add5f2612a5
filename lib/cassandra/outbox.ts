/**
 * The transactional outbox (lib/outbox.ts) on Cassandra. A change and its events are written in
 * one LOGGED batch, which Cassandra guarantees to apply completely or not at all (eventually,
 * through its batch log), so an event exists if and only if its change does.
 *
 * Events live in one partition, clustered by timeuuid, so the relay reads them oldest first.
 * A relay reads forward from a floor instead of from the partition's start each time, so it does
 * not wade through the tombstones of published events. The floor trails the newest published
 * event by `lateWriteGraceMs`: a commit whose timeuuid was taken before others but whose batch
 * landed after them (a slow writer) is still found. As a last safety net the relay reads the
 * whole partition every `fullScanIntervalMs`. Reading an event twice only republishes it, which
 * every consumer tolerates; missing one would lose it, so every doubt is resolved by reading more.
 */
import cassandra from "cassandra-driver";
import type { Outbox, OutboxEvent, OutboxRecord } from "../outbox.ts";
import type { CassandraClient } from "./session.ts";

export interface CassandraStatement {
  readonly query: string;
  readonly params: unknown[];
}

export interface CassandraOutbox extends Outbox {
  /** The insert of one event, to put in the logged batch of the change it belongs to. */
  appendStatement(event: OutboxEvent): CassandraStatement;
}

const TABLE_NAME = /^[a-z][a-z0-9_]{0,47}$/;
const PARTITION = 0;

/**
 * The outbox table's DDL, for the owning service's migrations. A deleted (published) event
 * resurrected after `gc_grace_seconds` would only be published again, so a short grace period
 * is safe here and keeps tombstones from piling up.
 */
export function outboxTableStatements(table: string): string[] {
  assertTableName(table);
  return [
    `CREATE TABLE IF NOT EXISTS ${table} (partition int, id timeuuid, topic text, key text, payload blob, properties map<text, text>, PRIMARY KEY (partition, id)) WITH CLUSTERING ORDER BY (id ASC) AND gc_grace_seconds = 3600`,
  ];
}

export function createCassandraOutbox(
  client: CassandraClient,
  table: string,
  options: { readonly lateWriteGraceMs?: number; readonly fullScanIntervalMs?: number } = {},
): CassandraOutbox {
  assertTableName(table);
  const lateWriteGraceMs = options.lateWriteGraceMs ?? 5 * 60_000;
  const fullScanIntervalMs = options.fullScanIntervalMs ?? 10 * 60_000;
  let floor: Date | undefined;
  let lastFullScan = 0;

  return {
    appendStatement(event) {
      return {
        query: `INSERT INTO ${table} (partition, id, topic, key, payload, properties) VALUES (?, ?, ?, ?, ?, ?)`,
        params: [
          PARTITION,
          cassandra.types.TimeUuid.now(),
          event.topic,
          event.key,
          Buffer.from(event.payload),
          { ...(event.properties ?? {}) },
        ],
      };
    },
    async pending(limit) {
      const now = Date.now();
      if (now - lastFullScan >= fullScanIntervalMs) {
        floor = undefined;
        lastFullScan = now;
      }
      const result =
        floor === undefined
          ? await client.execute(
              `SELECT id, topic, key, payload, properties FROM ${table} WHERE partition = ? LIMIT ?`,
              [PARTITION, limit],
            )
          : await client.execute(
              `SELECT id, topic, key, payload, properties FROM ${table} WHERE partition = ? AND id > ? LIMIT ?`,
              [PARTITION, cassandra.types.TimeUuid.min(floor, 0), limit],
            );
      return result.rows.map(
        (row): OutboxRecord => ({
          id: String(row.get("id")),
          topic: String(row.get("topic")),
          key: String(row.get("key")),
          payload: new Uint8Array(row.get("payload") as Buffer),
          properties: (row.get("properties") as Record<string, string> | null) ?? {},
        }),
      );
    },
    async markPublished(ids) {
      if (ids.length === 0) return;
      const queries = ids.map((id) => ({
        query: `DELETE FROM ${table} WHERE partition = ? AND id = ?`,
        params: [PARTITION, cassandra.types.TimeUuid.fromString(id)],
      }));
      // One partition: an unlogged batch is applied as one mutation.
      await client.batch(queries, { logged: false });
      const newest = Math.max(
        ...ids.map((id) => cassandra.types.TimeUuid.fromString(id).getDate().getTime()),
      );
      const candidate = new Date(newest - lateWriteGraceMs);
      if (floor === undefined || candidate > floor) floor = candidate;
    },
  };
}

function assertTableName(table: string) {
  if (!TABLE_NAME.test(table)) throw new Error(`invalid outbox table name ${table}`);
}
