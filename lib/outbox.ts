import type { DatabaseSync } from "node:sqlite";
import { context, ROOT_CONTEXT } from "@opentelemetry/api";
import type { Broker, OutgoingBrokerMessage } from "./broker/broker.ts";
import { messageContext, withProducerSpan } from "./broker/tracing.ts";
import type { Logger } from "./logging.ts";
import { inTransaction, withoutWaitingForDisk } from "./sqlite.ts";

/**
 * The transactional outbox: a service writes the events of a change in the same transaction as
 * the change, and a relay publishes them afterwards. An event is never lost when the process dies
 * between commit and publish (it is published on restart), at the cost of an occasional duplicate,
 * which every consumer tolerates (events carry versions or ids).
 */
export interface OutboxEvent extends OutgoingBrokerMessage {
  readonly topic: string;
}

export interface OutboxRecord extends OutboxEvent {
  /** Opaque to the relay: an integer in SQLite, a timeuuid in Cassandra. */
  readonly id: string;
}

/** Where a store keeps unpublished events; the store's adapter implements it beside its tables. */
export interface Outbox {
  /** The oldest unpublished events, in the order they were written. */
  pending(limit: number): Promise<readonly OutboxRecord[]>;
  markPublished(ids: readonly string[]): Promise<void>;
}

/** An outbox table in an embedded SQLite store; `append` must be called inside the change's transaction. */
export function createSqliteOutbox(
  db: DatabaseSync,
  table: string,
): Outbox & { append(event: OutboxEvent): void } {
  if (!/^[a-z_]+$/.test(table)) throw new Error(`invalid outbox table name ${table}`);
  db.exec(
    `CREATE TABLE IF NOT EXISTS ${table} (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL, properties TEXT NOT NULL)`,
  );
  const insert = db.prepare(`INSERT INTO ${table} (topic, key, payload, properties) VALUES (?, ?, ?, ?)`);
  const select = db.prepare(`SELECT id, topic, key, payload, properties FROM ${table} ORDER BY id LIMIT ?`);
  const remove = db.prepare(`DELETE FROM ${table} WHERE id = ?`);
  return {
    append(event) {
      insert.run(event.topic, event.key, event.payload, JSON.stringify(event.properties ?? {}));
    },
    async pending(limit) {
      return select.all(limit).map((row) => ({
        id: String(row.id),
        topic: String(row.topic),
        key: String(row.key),
        payload: new Uint8Array(row.payload as Uint8Array),
        properties: JSON.parse(String(row.properties)) as Record<string, string>,
      }));
    },
    async markPublished(ids) {
      // Lost on a power cut, these rows are published again: a duplicate, which consumers take.
      withoutWaitingForDisk(db, () =>
        inTransaction(db, () => {
          for (const id of ids) remove.run(Number(id));
        }),
      );
    },
  };
}

export interface OutboxRelay {
  /** Publish now rather than at the next poll (call after committing a change). */
  notify(): void;
  /** Publishes what is pending, then stops. */
  stop(): Promise<void>;
}

/**
 * Publishes outbox events in order (per-key order holds), and removes each batch
 * once the broker has it. Polls every `intervalMs` as a safety net; `notify` wakes it at once.
 * On a broker error it logs, waits and retries from the same event.
 */
export function startOutboxRelay(
  outbox: Outbox,
  broker: Broker,
  options: { readonly logger: Logger; readonly intervalMs?: number; readonly batchSize?: number },
): OutboxRelay {
  const intervalMs = options.intervalMs ?? 500;
  const batchSize = options.batchSize ?? 100;
  let stopped = false;
  let running: Promise<void> | undefined;
  let again = false;

  // An event written by a traced request (its stored `traceparent`) is published under a producer
  // span continuing that request's trace, whatever context the relay happens to run in; an event
  // written outside any trace is published as it is.
  const publish = (record: OutboxRecord) => {
    const stored = record.properties ?? {};
    if (stored.traceparent === undefined || stored.traceparent === "") {
      return broker.publish(record.topic, { key: record.key, payload: record.payload, properties: stored });
    }
    return withProducerSpan(
      record.topic,
      record.key,
      (properties) =>
        broker.publish(record.topic, {
          key: record.key,
          payload: record.payload,
          properties: { ...stored, ...properties },
        }),
      { parent: messageContext(stored) },
    );
  };

  const drain = async () => {
    for (;;) {
      const batch = await outbox.pending(batchSize);
      if (batch.length === 0) return;
      // Issued together: the broker keeps call order per topic (as one Pulsar producer keeps send
      // order) and commits them as one group instead of one fsync each.
      await Promise.all(batch.map(publish));
      await outbox.markPublished(batch.map((r) => r.id));
    }
  };

  const kick = () => {
    if (running) {
      again = true;
      return;
    }
    // The relay's own work, not part of the request whose notify() woke it: each event's span
    // continues the trace stored with it.
    running = context.with(ROOT_CONTEXT, async () => {
      do {
        again = false;
        try {
          await drain();
        } catch (err) {
          options.logger.warn({ err }, "outbox relay could not publish; retrying");
        }
      } while (again && !stopped);
      running = undefined;
    });
  };

  const timer = setInterval(kick, intervalMs);
  timer.unref();
  kick();
  return {
    notify: kick,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
      await drain().catch((err: unknown) =>
        options.logger.warn({ err }, "outbox relay stopped with events pending"),
      );
    },
  };
}
