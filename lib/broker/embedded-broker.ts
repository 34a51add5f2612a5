import type { DatabaseSync, SQLOutputValue, StatementSync } from "node:sqlite";
import { context, ROOT_CONTEXT } from "@opentelemetry/api";
import type { Logger } from "../logging.ts";
import { createLogger } from "../logging.ts";
import { inTransaction, migrate, openSqlite, withoutWaitingForDisk } from "../sqlite.ts";
import type {
  Broker,
  BrokerMessage,
  FollowOptions,
  FollowSubscription,
  MessageHandler,
  OutgoingBrokerMessage,
  SubscribeOptions,
  Subscription,
  SubscriptionBacklog,
} from "./broker.ts";
import { checkOutgoingMessage, DEAD_LETTER_PROPERTIES, deadLetterTopic, Topics } from "./broker.ts";

/**
 * The embedded broker: the broker port on one SQLite file, standing in for Apache Pulsar when
 * every service runs in one process. One broker instance owns a file at a time (like one Pulsar
 * cluster owns its ledgers); other processes may publish into the same file, and their messages
 * reach this instance's consumers within `pollIntervalMs`.
 *
 * Storage: one append-only table of messages (a global AUTOINCREMENT sequence, so ids grow per
 * topic and are never reused), one row per durable subscription holding its mark-delete position
 * (everything at or below it is acknowledged), the individually acknowledged messages above that
 * position, and the negative-acknowledgement counts of messages still pending.
 *
 * Writes are group-committed: every publish, acknowledgement, redelivery count and dead-letter move
 * made during one turn of the event loop goes into one transaction (synchronous = FULL), and
 * `publish` resolves only after that transaction has committed. Consumers are woken in-process
 * when a transaction commits; polling is only the fallback for writes from other processes.
 */
export interface EmbeddedBrokerOptions {
  /** The SQLite file (its folder is created), or ":memory:" when durability is not needed. */
  readonly path: string;
  readonly retention?: {
    /**
     * How long messages acknowledged by every subscription (or published on a topic nobody
     * subscribes to) are kept for readers. Default 7 days. Unacknowledged messages are never deleted.
     */
    readonly maxAgeMs?: number;
    /** How often the sweep runs. Default 60 s. */
    readonly intervalMs?: number;
  };
  /**
   * Topics whose retention keeps the latest message of every key however old (Pulsar's compacted
   * topics): only superseded messages and old tombstones (empty payloads) are swept.
   * Default: the membership and block control topics.
   */
  readonly compactedTopics?: readonly string[];
  /** Fallback check for messages written by other processes. Default 1 s. */
  readonly pollIntervalMs?: number;
  /**
   * Unacknowledged messages a subscription holds in memory (Pulsar's receiver queue). A key that
   * keeps failing holds its messages back, while other keys proceed within this window. Default 5,000.
   */
  readonly receiveWindow?: number;
  /** Where handler failures and dead-lettering are logged. Default: a JSON logger at warn. */
  readonly logger?: Logger;
  /** The clock for publish times and retention (tests). Default Date.now. */
  readonly now?: () => number;
}

export interface EmbeddedBroker extends Broker {
  /** Runs the retention sweep now (it also runs every `retention.intervalMs`); returns how many messages it deleted. */
  sweepRetention(): number;
}

const DAY_MS = 24 * 60 * 60 * 1000;
const FOLLOWER_PAGE = 500;
/** A follower further behind than this reads from the file instead of memory; ephemeral messages are dropped for it. */
const FOLLOWER_QUEUE_LIMIT = 10_000;
const SWEEP_CHUNK = 2_000;
const SWEEP_MAX_CHUNKS = 50;
const FLUSH_RETRY_MS = 200;
/** Backlogs are counted up to this many messages per subscription, so a scrape stays short. */
export const BACKLOG_COUNT_LIMIT = 1_000_000;

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE broker_messages (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     topic TEXT NOT NULL,
     key TEXT NOT NULL,
     payload BLOB NOT NULL,
     properties TEXT,
     published_at INTEGER NOT NULL
   );
   CREATE INDEX broker_messages_by_topic ON broker_messages (topic, seq);
   CREATE TABLE broker_subscriptions (
     id INTEGER PRIMARY KEY,
     topic TEXT NOT NULL,
     name TEXT NOT NULL,
     mark_delete INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     UNIQUE (topic, name)
   );
   CREATE TABLE broker_acks (
     subscription_id INTEGER NOT NULL REFERENCES broker_subscriptions (id),
     seq INTEGER NOT NULL,
     PRIMARY KEY (subscription_id, seq)
   ) WITHOUT ROWID;
   CREATE TABLE broker_redeliveries (
     subscription_id INTEGER NOT NULL REFERENCES broker_subscriptions (id),
     seq INTEGER NOT NULL,
     count INTEGER NOT NULL,
     PRIMARY KEY (subscription_id, seq)
   ) WITHOUT ROWID;`,
];

/** Message ids are the sequence in fixed-width decimal, so the ids of one topic compare as strings. */
function formatId(seq: number): string {
  return seq.toString().padStart(16, "0");
}

/** A message as stored, shared by every subscription and follower that holds it. */
interface StoredMessage {
  readonly topic: string;
  readonly seq: number;
  readonly id: string;
  readonly key: string;
  readonly payload: Uint8Array;
  readonly properties: Readonly<Record<string, string>>;
  readonly publishedAt: number;
}

interface PendingWrite {
  readonly message: Omit<StoredMessage, "seq" | "id">;
  readonly propertiesJson: string | null;
  /** Absent for dead-letter moves, which the broker retries itself. */
  readonly resolve?: (id: string) => void;
  readonly reject?: (err: unknown) => void;
}

interface Statements {
  readonly insertMessage: StatementSync;
  readonly selectAfter: StatementSync;
  readonly selectTopic: StatementSync;
  readonly selectSequence: StatementSync;
  readonly selectSubscription: StatementSync;
  readonly insertSubscription: StatementSync;
  readonly updateMarkDelete: StatementSync;
  readonly selectAcks: StatementSync;
  readonly insertAck: StatementSync;
  readonly deleteAcksUpTo: StatementSync;
  readonly selectRedeliveries: StatementSync;
  readonly upsertRedelivery: StatementSync;
  readonly deleteRedelivery: StatementSync;
  readonly selectTopics: StatementSync;
  readonly selectHorizon: StatementSync;
  readonly selectFirstYoung: StatementSync;
  readonly deleteOld: StatementSync;
  readonly selectTopicForCompaction: StatementSync;
  readonly deleteSeq: StatementSync;
  readonly selectBacklogs: StatementSync;
}

function prepareStatements(db: DatabaseSync): Statements {
  return {
    insertMessage: db.prepare(
      "INSERT INTO broker_messages (topic, key, payload, properties, published_at) VALUES (?, ?, ?, ?, ?)",
    ),
    selectAfter: db.prepare(
      "SELECT seq, key, payload, properties, published_at FROM broker_messages WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
    ),
    selectTopic: db.prepare(
      "SELECT seq, key, payload, properties, published_at FROM broker_messages WHERE topic = ? ORDER BY seq",
    ),
    selectSequence: db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'broker_messages'"),
    selectSubscription: db.prepare(
      "SELECT id, mark_delete FROM broker_subscriptions WHERE topic = ? AND name = ?",
    ),
    insertSubscription: db.prepare(
      "INSERT INTO broker_subscriptions (topic, name, mark_delete, created_at) VALUES (?, ?, 0, ?)",
    ),
    updateMarkDelete: db.prepare("UPDATE broker_subscriptions SET mark_delete = ? WHERE id = ?"),
    selectAcks: db.prepare("SELECT seq FROM broker_acks WHERE subscription_id = ?"),
    insertAck: db.prepare("INSERT OR IGNORE INTO broker_acks (subscription_id, seq) VALUES (?, ?)"),
    deleteAcksUpTo: db.prepare("DELETE FROM broker_acks WHERE subscription_id = ? AND seq <= ?"),
    selectRedeliveries: db.prepare("SELECT seq, count FROM broker_redeliveries WHERE subscription_id = ?"),
    upsertRedelivery: db.prepare(
      "INSERT INTO broker_redeliveries (subscription_id, seq, count) VALUES (?, ?, ?) ON CONFLICT (subscription_id, seq) DO UPDATE SET count = excluded.count",
    ),
    deleteRedelivery: db.prepare("DELETE FROM broker_redeliveries WHERE subscription_id = ? AND seq = ?"),
    // A skip-scan over the (topic, seq) index: one probe per topic, not a scan of every message.
    selectTopics: db.prepare(
      `WITH RECURSIVE t (topic) AS (
         SELECT MIN(topic) FROM broker_messages
         UNION ALL
         SELECT (SELECT MIN(topic) FROM broker_messages WHERE topic > t.topic) FROM t WHERE t.topic IS NOT NULL
       ) SELECT topic FROM t WHERE topic IS NOT NULL`,
    ),
    selectHorizon: db.prepare(
      "SELECT MIN(mark_delete) AS horizon, COUNT(*) AS n FROM broker_subscriptions WHERE topic = ?",
    ),
    selectFirstYoung: db.prepare(
      "SELECT seq FROM broker_messages WHERE topic = ? AND published_at >= ? ORDER BY seq LIMIT 1",
    ),
    deleteOld: db.prepare(
      `DELETE FROM broker_messages WHERE seq IN (
         SELECT seq FROM broker_messages WHERE topic = ? AND seq <= ? AND published_at < ? ORDER BY seq LIMIT ?
       )`,
    ),
    selectTopicForCompaction: db.prepare(
      "SELECT seq, key, length(payload) AS size, published_at FROM broker_messages WHERE topic = ? AND seq <= ? ORDER BY seq",
    ),
    deleteSeq: db.prepare("DELETE FROM broker_messages WHERE seq = ?"),
    // Messages above the mark-delete position, less those acknowledged individually up there: both
    // ranges are index scans, the first one capped.
    selectBacklogs: db.prepare(
      `SELECT s.topic, s.name,
         (SELECT COUNT(*) FROM (SELECT 1 FROM broker_messages m WHERE m.topic = s.topic AND m.seq > s.mark_delete LIMIT ?))
         - (SELECT COUNT(*) FROM broker_acks a WHERE a.subscription_id = s.id AND a.seq > s.mark_delete) AS backlog
       FROM broker_subscriptions s ORDER BY s.topic, s.name`,
    ),
  };
}

function storedFromRow(topic: string, row: Record<string, SQLOutputValue>): StoredMessage {
  const seq = Number(row.seq);
  const properties =
    row.properties === null ? {} : (JSON.parse(String(row.properties)) as Record<string, string>);
  return {
    topic,
    seq,
    id: formatId(seq),
    key: String(row.key),
    payload: row.payload as Uint8Array,
    properties: Object.freeze(properties),
    publishedAt: Number(row.published_at),
  };
}

function toBrokerMessage(stored: StoredMessage, redeliveryCount: number): BrokerMessage {
  return {
    topic: stored.topic,
    id: stored.id,
    key: stored.key,
    // Every delivery gets its own copy: a handler may keep or change its bytes.
    payload: stored.payload.slice(),
    properties: stored.properties,
    publishedAt: new Date(stored.publishedAt),
    redeliveryCount,
  };
}

function checkTopic(topic: string): void {
  if (typeof topic !== "string" || topic.length === 0 || topic.length > 512) {
    throw new TypeError(`invalid topic name ${JSON.stringify(topic)}`);
  }
}

/** The message's properties as stored: JSON, or null for none. */
function storedProperties(message: OutgoingBrokerMessage): string | null {
  const properties = message.properties;
  return properties === undefined || Object.keys(properties).length === 0 ? null : JSON.stringify(properties);
}

function positiveInt(value: number | undefined, fallback: number, name: string, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

export async function createEmbeddedBroker(options: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
  const db = openSqlite(options.path);
  try {
    migrate(db, "broker", MIGRATIONS);
  } catch (err) {
    db.close();
    throw err;
  }
  return new EmbeddedBrokerImpl(db, options);
}

interface ConsumerOptions {
  readonly maxInFlight: number;
  readonly redeliveryDelayMs: number;
  readonly maxRedeliveries: number;
}

class Consumer {
  readonly handler: MessageHandler;
  readonly options: ConsumerOptions;
  inFlight = 0;
  closing = false;
  closed: Promise<void> | undefined;
  readonly running = new Set<Promise<void>>();

  constructor(handler: MessageHandler, options: ConsumerOptions) {
    this.handler = handler;
    this.options = options;
  }
}

/** A message pending for one subscription. */
interface Entry {
  readonly stored: StoredMessage;
  redeliveryCount: number;
}

/** The unacknowledged messages of one key, oldest first; only the head is ever handled. */
interface KeyQueue {
  readonly key: string;
  readonly entries: Entry[];
  ready: boolean;
}

interface SubscriptionWrites {
  readonly acks: number[];
  readonly counts: Map<number, number>;
  readonly countDeletes: number[];
  readonly markDelete: number;
}

/** The in-memory state of one durable subscription, shared by its consumers in this process. */
class SubscriptionState {
  readonly broker: EmbeddedBrokerImpl;
  readonly id: number;
  readonly topic: string;
  readonly name: string;
  readonly mode: "key_shared" | "failover";
  readonly consumers: Consumer[] = [];
  /** Loaded, unacknowledged messages in sequence order (Map keeps insertion order). */
  readonly pending = new Map<number, Entry>();
  readonly keyQueues = new Map<string, KeyQueue>();
  private readyQueue: KeyQueue[] = [];
  private readyHead = 0;
  private roundRobin = 0;
  /** Highest sequence loaded from the file (or taken from a commit). */
  readPosition: number;
  /** Every message of the topic up to the last commit is loaded. */
  caughtUp = false;
  closed = false;
  readonly timers = new Set<ReturnType<typeof setTimeout>>();

  private persistedMarkDelete: number;
  /** Individually acknowledged sequences above the mark-delete position, as persisted. */
  private readonly ackRows: Set<number>;
  private minAckRow = Number.POSITIVE_INFINITY;
  private readonly loadedCounts: Map<number, number>;
  private ackBatch: number[] = [];
  private countUpdates = new Map<number, number>();
  private countDeletes: number[] = [];

  constructor(
    broker: EmbeddedBrokerImpl,
    init: {
      id: number;
      topic: string;
      name: string;
      mode: "key_shared" | "failover";
      markDelete: number;
      ackRows: Set<number>;
      counts: Map<number, number>;
    },
  ) {
    this.broker = broker;
    this.id = init.id;
    this.topic = init.topic;
    this.name = init.name;
    this.mode = init.mode;
    this.readPosition = init.markDelete;
    this.persistedMarkDelete = init.markDelete;
    this.ackRows = init.ackRows;
    for (const seq of this.ackRows) this.minAckRow = Math.min(this.minAckRow, seq);
    this.loadedCounts = init.counts;
  }

  /** Loads the next messages from the file when the window has room (half of it, to read in batches). */
  private fill(): void {
    const window = this.broker.receiveWindow;
    while (!this.caughtUp && this.pending.size <= window / 2) {
      const limit = window - this.pending.size;
      const rows = this.broker.statements.selectAfter.all(this.topic, this.readPosition, limit);
      for (const row of rows) {
        const stored = storedFromRow(this.topic, row);
        this.readPosition = stored.seq;
        if (this.ackRows.has(stored.seq)) continue;
        this.add(stored);
      }
      if (rows.length < limit) this.caughtUp = true;
    }
  }

  /** A message just committed in this process: take it from memory when nothing before it is missing. */
  offer(stored: StoredMessage): void {
    if (this.caughtUp && this.pending.size < this.broker.receiveWindow) {
      this.readPosition = stored.seq;
      this.add(stored);
    } else {
      this.caughtUp = false;
    }
  }

  private add(stored: StoredMessage): void {
    const entry: Entry = {
      stored,
      redeliveryCount: this.loadedCounts.get(stored.seq) ?? 0,
    };
    this.pending.set(stored.seq, entry);
    let queue = this.keyQueues.get(stored.key);
    if (queue === undefined) {
      queue = { key: stored.key, entries: [], ready: false };
      this.keyQueues.set(stored.key, queue);
    }
    queue.entries.push(entry);
    if (queue.entries.length === 1) this.markReady(queue);
  }

  private markReady(queue: KeyQueue): void {
    if (queue.ready) return;
    queue.ready = true;
    this.readyQueue.push(queue);
  }

  private pickConsumer(): Consumer | undefined {
    if (this.mode === "failover") {
      // The first consumer is active; while it closes nobody takes over, so two never overlap.
      const active = this.consumers[0];
      return active !== undefined && !active.closing && active.inFlight < active.options.maxInFlight
        ? active
        : undefined;
    }
    const n = this.consumers.length;
    for (let i = 0; i < n; i++) {
      const index = (this.roundRobin + i) % n;
      const consumer = this.consumers[index] as Consumer;
      if (!consumer.closing && consumer.inFlight < consumer.options.maxInFlight) {
        this.roundRobin = (index + 1) % n;
        return consumer;
      }
    }
    return undefined;
  }

  dispatch(): void {
    if (this.closed) return;
    if (!this.caughtUp) this.fill();
    while (this.readyHead < this.readyQueue.length) {
      const consumer = this.pickConsumer();
      if (consumer === undefined) break;
      const queue = this.readyQueue[this.readyHead++] as KeyQueue;
      queue.ready = false;
      this.start(consumer, queue, queue.entries[0] as Entry);
    }
    if (this.readyHead > 1024 && this.readyHead * 2 > this.readyQueue.length) {
      this.readyQueue = this.readyQueue.slice(this.readyHead);
      this.readyHead = 0;
    }
  }

  private start(consumer: Consumer, queue: KeyQueue, entry: Entry): void {
    consumer.inFlight++;
    const message = toBrokerMessage(entry.stored, entry.redeliveryCount);
    // In the root context, as a handler fed from Pulsar's socket would run: not in the context of
    // whichever publish or timer woke the dispatch, so a trace continues only through the
    // message's `traceparent` (lib/broker/tracing.ts), never by accident.
    const run = Promise.resolve(message)
      .then((m) => context.with(ROOT_CONTEXT, () => consumer.handler(m)))
      .then(
        () => this.settle(consumer, queue, entry, true, undefined),
        (err: unknown) => this.settle(consumer, queue, entry, false, err),
      );
    consumer.running.add(run);
    void run.finally(() => consumer.running.delete(run));
  }

  private settle(consumer: Consumer, queue: KeyQueue, entry: Entry, ok: boolean, err: unknown): void {
    try {
      consumer.inFlight--;
      if (ok) {
        this.ack(queue, entry);
      } else if (entry.redeliveryCount >= consumer.options.maxRedeliveries) {
        const dlq = deadLetterTopic(this.topic, this.name);
        this.broker.logger.warn(
          { err, topic: this.topic, subscription: this.name, id: entry.stored.id, dead_letter_topic: dlq },
          "message moved to the dead-letter topic after its last redelivery failed",
        );
        this.broker.enqueueDeadLetter(dlq, entry.stored);
        this.ack(queue, entry);
      } else {
        this.broker.logger.debug(
          { err, topic: this.topic, subscription: this.name, id: entry.stored.id },
          "handler failed; message will be redelivered",
        );
        // The key's queue is not marked ready until the timer fires: later messages wait behind this one.
        entry.redeliveryCount++;
        this.countUpdates.set(entry.stored.seq, entry.redeliveryCount);
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          this.markReady(queue);
          this.dispatch();
        }, consumer.options.redeliveryDelayMs);
        this.timers.add(timer);
      }
      this.broker.markDirty(this);
      this.dispatch();
    } catch (error) {
      this.broker.logger.error(
        { err: error, topic: this.topic },
        "embedded broker failed to settle a message",
      );
    }
  }

  private ack(queue: KeyQueue, entry: Entry): void {
    queue.entries.shift();
    if (queue.entries.length > 0) this.markReady(queue);
    else this.keyQueues.delete(queue.key);
    const seq = entry.stored.seq;
    this.pending.delete(seq);
    this.ackBatch.push(seq);
    if (entry.redeliveryCount > 0) {
      this.countUpdates.delete(seq);
      this.countDeletes.push(seq);
    }
  }

  private markDelete(): number {
    const first = this.pending.keys().next();
    return first.done === true ? this.readPosition : first.value - 1;
  }

  takeWrites(): SubscriptionWrites {
    const writes = {
      acks: this.ackBatch,
      counts: this.countUpdates,
      countDeletes: this.countDeletes,
      markDelete: this.markDelete(),
    };
    this.ackBatch = [];
    this.countUpdates = new Map();
    this.countDeletes = [];
    return writes;
  }

  /** Runs inside the flush transaction. */
  persist(writes: SubscriptionWrites): void {
    const s = this.broker.statements;
    if (writes.markDelete > this.persistedMarkDelete) s.updateMarkDelete.run(writes.markDelete, this.id);
    for (const seq of writes.acks) if (seq > writes.markDelete) s.insertAck.run(this.id, seq);
    if (this.minAckRow <= writes.markDelete) s.deleteAcksUpTo.run(this.id, writes.markDelete);
    for (const [seq, count] of writes.counts) s.upsertRedelivery.run(this.id, seq, count);
    for (const seq of writes.countDeletes) s.deleteRedelivery.run(this.id, seq);
  }

  /** After the flush transaction committed. */
  committed(writes: SubscriptionWrites): void {
    this.persistedMarkDelete = Math.max(this.persistedMarkDelete, writes.markDelete);
    const md = this.persistedMarkDelete;
    for (const seq of writes.acks) {
      if (seq > md) {
        this.ackRows.add(seq);
        if (seq < this.minAckRow) this.minAckRow = seq;
      }
    }
    if (this.minAckRow <= md) {
      this.minAckRow = Number.POSITIVE_INFINITY;
      for (const seq of this.ackRows) {
        if (seq <= md) this.ackRows.delete(seq);
        else if (seq < this.minAckRow) this.minAckRow = seq;
      }
    }
  }

  /** The flush failed: keep the writes for the next one. */
  restore(writes: SubscriptionWrites): void {
    this.ackBatch = writes.acks.concat(this.ackBatch);
    for (const [seq, count] of this.countUpdates) writes.counts.set(seq, count);
    this.countUpdates = writes.counts;
    this.countDeletes = writes.countDeletes.concat(this.countDeletes);
  }

  close(): void {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

/** A non-durable reader: replays the retained topic (or its latest message per key), then follows it. */
class Follower {
  readonly broker: EmbeddedBrokerImpl;
  readonly topic: string;
  readonly handler: (message: BrokerMessage) => void | Promise<void>;
  private queue: BrokerMessage[] = [];
  private head = 0;
  private readPosition = 0;
  caughtUp = false;
  private closed = false;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private markDrained: () => void = () => {};
  /** Resolves once everything retained when the follower started has been handled. */
  readonly drained = new Promise<void>((resolve) => {
    this.markDrained = resolve;
  });

  constructor(
    broker: EmbeddedBrokerImpl,
    topic: string,
    handler: (message: BrokerMessage) => void | Promise<void>,
  ) {
    this.broker = broker;
    this.topic = topic;
    this.handler = handler;
  }

  /** Replays the latest message of every key, in sequence order, leaving out keys whose latest is a tombstone. */
  replayCompacted(): void {
    const latest = new Map<string, StoredMessage>();
    for (const row of this.broker.statements.selectTopic.iterate(this.topic)) {
      const stored = storedFromRow(this.topic, row);
      this.readPosition = stored.seq;
      latest.delete(stored.key);
      latest.set(stored.key, stored);
    }
    for (const stored of latest.values()) {
      if (stored.payload.length > 0) this.queue.push(toBrokerMessage(stored, 0));
    }
    this.caughtUp = true;
  }

  start(): void {
    this.loop = this.run();
  }

  private get queued(): number {
    return this.queue.length - this.head;
  }

  private fill(): void {
    const rows = this.broker.statements.selectAfter.all(this.topic, this.readPosition, FOLLOWER_PAGE);
    for (const row of rows) {
      const stored = storedFromRow(this.topic, row);
      this.readPosition = stored.seq;
      this.queue.push(toBrokerMessage(stored, 0));
    }
    if (rows.length < FOLLOWER_PAGE) this.caughtUp = true;
  }

  offer(stored: StoredMessage): void {
    if (this.caughtUp && this.queued < FOLLOWER_QUEUE_LIMIT) {
      this.readPosition = stored.seq;
      this.queue.push(toBrokerMessage(stored, 0));
    } else {
      this.caughtUp = false;
    }
    this.wake();
  }

  offerEphemeral(message: BrokerMessage): void {
    if (this.queued >= FOLLOWER_QUEUE_LIMIT) return;
    this.queue.push({ ...message, payload: message.payload.slice() });
    this.wake();
  }

  wake(): void {
    const wakeUp = this.wakeUp;
    this.wakeUp = undefined;
    wakeUp?.();
  }

  private async run(): Promise<void> {
    await Promise.resolve();
    while (!this.closed) {
      if (this.queued === 0) {
        this.queue = [];
        this.head = 0;
        if (!this.caughtUp) this.fill();
        if (this.queued === 0) {
          if (this.caughtUp) this.markDrained();
          await new Promise<void>((resolve) => {
            this.wakeUp = resolve;
          });
          continue;
        }
      }
      const message = this.queue[this.head++] as BrokerMessage;
      try {
        await context.with(ROOT_CONTEXT, () => this.handler(message));
      } catch (err) {
        this.broker.logger.warn(
          { err, topic: this.topic, id: message.id },
          "follower handler failed; message skipped",
        );
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake();
    await this.loop;
    this.markDrained();
  }
}

class EmbeddedBrokerImpl implements EmbeddedBroker {
  readonly db: DatabaseSync;
  readonly statements: Statements;
  readonly logger: Logger;
  readonly receiveWindow: number;
  private readonly now: () => number;
  private readonly maxAgeMs: number;
  private readonly compactedTopics: ReadonlySet<string>;
  private readonly states = new Map<string, SubscriptionState>();
  private readonly statesByTopic = new Map<string, Set<SubscriptionState>>();
  private readonly followersByTopic = new Map<string, Set<Follower>>();
  private readonly consumers = new Set<{ close(): Promise<void> }>();
  private writes: PendingWrite[] = [];
  private readonly dirty = new Set<SubscriptionState>();
  private flushScheduled = false;
  private flushWaiters: (() => void)[] = [];
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last sequence this instance knows was assigned; a gap means another process wrote. */
  private lastSeq: number;
  private ephemeralSeq = 0;
  private closing: Promise<void> | undefined;
  /** Publishes are accepted until close() has drained the running handlers (they may publish). */
  private accepting = true;
  private dbClosed = false;
  private readonly pollTimer: ReturnType<typeof setInterval>;
  private readonly sweepTimer: ReturnType<typeof setInterval>;

  constructor(db: DatabaseSync, options: EmbeddedBrokerOptions) {
    this.db = db;
    this.statements = prepareStatements(db);
    this.logger = options.logger ?? createLogger("embedded-broker", "warn");
    this.receiveWindow = positiveInt(options.receiveWindow, 5_000, "receiveWindow", 2);
    this.now = options.now ?? Date.now;
    this.maxAgeMs = positiveInt(options.retention?.maxAgeMs, 7 * DAY_MS, "retention.maxAgeMs", 0);
    this.compactedTopics = new Set(options.compactedTopics ?? [Topics.memberships, Topics.blocks]);
    this.lastSeq = this.currentSequence();
    this.pollTimer = setInterval(
      () => this.poll(),
      positiveInt(options.pollIntervalMs, 1_000, "pollIntervalMs"),
    );
    this.pollTimer.unref();
    this.sweepTimer = setInterval(
      () => {
        try {
          this.sweepRetention();
        } catch (err) {
          this.logger.error({ err }, "retention sweep failed");
        }
      },
      positiveInt(options.retention?.intervalMs, 60_000, "retention.intervalMs"),
    );
    this.sweepTimer.unref();
  }

  private currentSequence(): number {
    const row = this.statements.selectSequence.get();
    return row === undefined ? 0 : Number(row.seq);
  }

  // ---- publishing and the group commit

  publish(topic: string, message: OutgoingBrokerMessage): Promise<{ readonly id: string }> {
    if (!this.accepting) return Promise.reject(new Error("the broker is closed"));
    try {
      checkTopic(topic);
      checkOutgoingMessage(message);
    } catch (err) {
      return Promise.reject(err);
    }
    const propertiesJson = storedProperties(message);
    return new Promise((resolve, reject) => {
      this.writes.push({
        message: {
          topic,
          key: message.key,
          payload: new Uint8Array(message.payload),
          properties: Object.freeze({ ...message.properties }),
          publishedAt: this.now(),
        },
        propertiesJson,
        resolve: (id) => resolve({ id }),
        reject,
      });
      this.scheduleFlush();
    });
  }

  enqueueDeadLetter(dlq: string, stored: StoredMessage): void {
    const properties = {
      ...stored.properties,
      [DEAD_LETTER_PROPERTIES.realTopic]: stored.topic,
      [DEAD_LETTER_PROPERTIES.originMessageId]: stored.id,
    };
    this.writes.push({
      message: {
        topic: dlq,
        key: stored.key,
        payload: stored.payload,
        properties: Object.freeze(properties),
        publishedAt: this.now(),
      },
      propertiesJson: JSON.stringify(properties),
    });
    this.scheduleFlush();
  }

  markDirty(state: SubscriptionState): void {
    this.dirty.add(state);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.dbClosed) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /** Resolves after the next flush (the writes made so far are committed, or retried later if it failed). */
  flushed(): Promise<void> {
    return new Promise((resolve) => {
      this.flushWaiters.push(resolve);
      this.scheduleFlush();
      if (!this.flushScheduled) resolve();
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const waiters = this.flushWaiters;
    this.flushWaiters = [];
    try {
      if (!this.dbClosed) this.commit();
    } finally {
      for (const resolve of waiters) resolve();
    }
  }

  private commit(): void {
    const writes = this.writes;
    this.writes = [];
    const states = [...this.dirty].filter((state) => !state.closed);
    this.dirty.clear();
    if (writes.length === 0 && states.length === 0) return;
    const subscriptionWrites = states.map((state) => ({ state, writes: state.takeWrites() }));
    const s = this.statements;
    let seqs: number[];
    try {
      // Only acknowledgements and redelivery counts: lost on a power cut, those messages are
      // delivered again (at least once, as promised), so that commit does not wait for the disk.
      // A publish (dead-letter moves included) always does.
      const durable = writes.length > 0;
      const transaction = () =>
        inTransaction(this.db, () => {
          const out: number[] = [];
          for (const { message, propertiesJson } of writes) {
            const result = s.insertMessage.run(
              message.topic,
              message.key,
              message.payload,
              propertiesJson,
              message.publishedAt,
            );
            out.push(Number(result.lastInsertRowid));
          }
          for (const { state, writes: w } of subscriptionWrites) state.persist(w);
          return out;
        });
      seqs = durable ? transaction() : withoutWaitingForDisk(this.db, transaction);
    } catch (err) {
      this.logger.error(
        { err },
        "embedded broker could not commit; publishes fail, acknowledgements are retried",
      );
      const retry: PendingWrite[] = [];
      for (const write of writes) {
        if (write.reject !== undefined) write.reject(err);
        else retry.push(write);
      }
      this.writes = retry.concat(this.writes);
      for (const { state, writes: w } of subscriptionWrites) {
        state.restore(w);
        this.dirty.add(state);
      }
      if (this.retryTimer === undefined && (this.writes.length > 0 || this.dirty.size > 0)) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.scheduleFlush();
        }, FLUSH_RETRY_MS);
      }
      return;
    }
    for (const { state, writes: w } of subscriptionWrites) state.committed(w);
    const touched = new Set<SubscriptionState>();
    for (let i = 0; i < writes.length; i++) {
      const write = writes[i] as PendingWrite;
      const seq = seqs[i] as number;
      if (seq !== this.lastSeq + 1) this.markAllStale();
      this.lastSeq = seq;
      const stored: StoredMessage = { ...write.message, seq, id: formatId(seq) };
      const topicStates = this.statesByTopic.get(stored.topic);
      if (topicStates !== undefined) {
        for (const state of topicStates) {
          state.offer(stored);
          touched.add(state);
        }
      }
      const followers = this.followersByTopic.get(stored.topic);
      if (followers !== undefined) for (const follower of followers) follower.offer(stored);
    }
    for (let i = 0; i < writes.length; i++) writes[i]?.resolve?.(formatId(seqs[i] as number));
    for (const state of touched) state.dispatch();
  }

  private markAllStale(): void {
    for (const state of this.states.values()) state.caughtUp = false;
    for (const followers of this.followersByTopic.values()) {
      for (const follower of followers) follower.caughtUp = false;
    }
  }

  /** The fallback for messages written by another process into this file. */
  private poll(): void {
    if (this.dbClosed) return;
    try {
      const seq = this.currentSequence();
      if (seq <= this.lastSeq) return;
      this.lastSeq = seq;
      this.markAllStale();
      for (const state of this.states.values()) state.dispatch();
      for (const followers of this.followersByTopic.values())
        for (const follower of followers) follower.wake();
    } catch (err) {
      this.logger.warn({ err }, "embedded broker poll failed");
    }
  }

  publishEphemeral(topic: string, message: OutgoingBrokerMessage): void {
    if (this.closing !== undefined) return;
    checkTopic(topic);
    checkOutgoingMessage(message);
    const followers = this.followersByTopic.get(topic);
    if (followers === undefined || followers.size === 0) return;
    const delivered: BrokerMessage = {
      topic,
      id: `e-${formatId(++this.ephemeralSeq)}`,
      key: message.key,
      payload: new Uint8Array(message.payload),
      properties: Object.freeze({ ...message.properties }),
      publishedAt: new Date(this.now()),
      redeliveryCount: 0,
    };
    for (const follower of followers) follower.offerEphemeral(delivered);
  }

  // ---- subscriptions

  async subscribe(topic: string, options: SubscribeOptions, handler: MessageHandler): Promise<Subscription> {
    if (this.closing !== undefined) throw new Error("the broker is closed");
    checkTopic(topic);
    if (typeof options.subscription !== "string" || options.subscription.length === 0) {
      throw new TypeError("subscribe needs a subscription name");
    }
    const mode = options.mode ?? "key_shared";
    if (mode !== "key_shared" && mode !== "failover")
      throw new TypeError(`unknown subscription mode ${mode}`);
    const consumer = new Consumer(handler, {
      maxInFlight: positiveInt(options.maxInFlight, 64, "maxInFlight"),
      redeliveryDelayMs: positiveInt(options.redeliveryDelayMs, 1_000, "redeliveryDelayMs", 0),
      maxRedeliveries: positiveInt(options.maxRedeliveries, 10, "maxRedeliveries", 0),
    });
    const stateKey = `${topic}\u0000${options.subscription}`;
    let state = this.states.get(stateKey);
    if (state === undefined) {
      state = this.openSubscription(topic, options.subscription, mode);
      this.states.set(stateKey, state);
      let topicStates = this.statesByTopic.get(topic);
      if (topicStates === undefined) {
        topicStates = new Set();
        this.statesByTopic.set(topic, topicStates);
      }
      topicStates.add(state);
    } else if (state.mode !== mode) {
      throw new Error(
        `subscription ${options.subscription} on ${topic} is ${state.mode}; a ${mode} consumer cannot join it`,
      );
    }
    const subscriptionState = state;
    subscriptionState.consumers.push(consumer);
    subscriptionState.dispatch();

    const handle = {
      close: (): Promise<void> => {
        consumer.closed ??= (async () => {
          consumer.closing = true;
          while (consumer.running.size > 0) await Promise.all([...consumer.running]);
          const index = subscriptionState.consumers.indexOf(consumer);
          if (index >= 0) subscriptionState.consumers.splice(index, 1);
          // Acknowledgements made so far are committed before close resolves.
          await this.flushed();
          if (subscriptionState.consumers.length === 0) this.dropState(stateKey, subscriptionState);
          else subscriptionState.dispatch();
          this.consumers.delete(handle);
        })();
        return consumer.closed;
      },
    };
    this.consumers.add(handle);
    return handle;
  }

  private openSubscription(topic: string, name: string, mode: "key_shared" | "failover"): SubscriptionState {
    const s = this.statements;
    let row = s.selectSubscription.get(topic, name);
    if (row === undefined) {
      // A new subscription starts at the earliest retained message (see SubscribeOptions).
      s.insertSubscription.run(topic, name, this.now());
      row = s.selectSubscription.get(topic, name);
    }
    if (row === undefined) throw new Error(`could not create subscription ${name} on ${topic}`);
    const id = Number(row.id);
    const ackRows = new Set<number>();
    for (const ack of s.selectAcks.all(id)) ackRows.add(Number(ack.seq));
    const counts = new Map<number, number>();
    for (const count of s.selectRedeliveries.all(id)) counts.set(Number(count.seq), Number(count.count));
    return new SubscriptionState(this, {
      id,
      topic,
      name,
      mode,
      markDelete: Number(row.mark_delete),
      ackRows,
      counts,
    });
  }

  private dropState(stateKey: string, state: SubscriptionState): void {
    state.close();
    this.states.delete(stateKey);
    this.dirty.delete(state);
    const topicStates = this.statesByTopic.get(state.topic);
    topicStates?.delete(state);
    if (topicStates?.size === 0) this.statesByTopic.delete(state.topic);
  }

  // ---- followers

  async follow(
    topic: string,
    options: FollowOptions,
    handler: (message: BrokerMessage) => void | Promise<void>,
  ): Promise<FollowSubscription> {
    if (this.closing !== undefined) throw new Error("the broker is closed");
    checkTopic(topic);
    const follower = new Follower(this, topic, handler);
    if (options.compacted === true) follower.replayCompacted();
    let followers = this.followersByTopic.get(topic);
    if (followers === undefined) {
      followers = new Set();
      this.followersByTopic.set(topic, followers);
    }
    followers.add(follower);
    follower.start();
    const topicFollowers = followers;
    let closed: Promise<void> | undefined;
    return {
      caughtUp: follower.drained,
      close: () => {
        closed ??= (async () => {
          await follower.close();
          topicFollowers.delete(follower);
          if (topicFollowers.size === 0 && this.followersByTopic.get(topic) === topicFollowers) {
            this.followersByTopic.delete(topic);
          }
        })();
        return closed;
      },
    };
  }

  // ---- metrics

  /**
   * Every durable subscription in the file, also those no consumer of this process holds (a
   * stopped service's), as last committed: at most one group commit behind.
   */
  async backlog(): Promise<readonly SubscriptionBacklog[]> {
    if (this.dbClosed) return [];
    return this.statements.selectBacklogs.all(BACKLOG_COUNT_LIMIT).map((row) => ({
      topic: String(row.topic),
      subscription: String(row.name),
      messages: Math.max(0, Number(row.backlog)),
    }));
  }

  // ---- retention

  sweepRetention(): number {
    if (this.dbClosed) return 0;
    const s = this.statements;
    const cutoff = this.now() - this.maxAgeMs;
    let deleted = 0;
    const topics = s.selectTopics.all().map((row) => String(row.topic));
    for (const topic of topics) {
      // Only messages at or below every subscription's mark-delete position are acknowledged by all.
      const horizonRow = s.selectHorizon.get(topic);
      const horizon =
        horizonRow === undefined || Number(horizonRow.n) === 0
          ? Number.MAX_SAFE_INTEGER
          : Number(horizonRow.horizon);
      if (this.compactedTopics.has(topic)) {
        deleted += this.compact(topic, horizon, cutoff);
        continue;
      }
      // Publish times grow with the sequence (up to clock steps), so the old messages are a prefix.
      const young = s.selectFirstYoung.get(topic, cutoff);
      const bound = Math.min(horizon, young === undefined ? Number.MAX_SAFE_INTEGER : Number(young.seq) - 1);
      for (let chunk = 0; chunk < SWEEP_MAX_CHUNKS; chunk++) {
        const changes = Number(s.deleteOld.run(topic, bound, cutoff, SWEEP_CHUNK).changes);
        deleted += changes;
        if (changes < SWEEP_CHUNK) break;
      }
    }
    return deleted;
  }

  /** Compacted topics keep the latest message of every key; superseded messages and old tombstones go. */
  private compact(topic: string, horizon: number, cutoff: number): number {
    const s = this.statements;
    const byKey = new Map<string, { seq: number; size: number; publishedAt: number }[]>();
    for (const row of s.selectTopicForCompaction.iterate(topic, horizon)) {
      const key = String(row.key);
      let list = byKey.get(key);
      if (list === undefined) {
        list = [];
        byKey.set(key, list);
      }
      list.push({ seq: Number(row.seq), size: Number(row.size), publishedAt: Number(row.published_at) });
    }
    // The newest message of a key may sit above the horizon; look it up so older ones count as superseded.
    const newer = new Set<string>();
    for (const row of s.selectAfter.iterate(topic, horizon, Number.MAX_SAFE_INTEGER))
      newer.add(String(row.key));
    const doomed: number[] = [];
    for (const [key, list] of byKey) {
      const last = list.length - 1;
      for (let i = 0; i < last; i++) {
        const m = list[i] as { seq: number; publishedAt: number };
        if (m.publishedAt < cutoff) doomed.push(m.seq);
      }
      const latest = list[last] as { seq: number; size: number; publishedAt: number };
      const olderAllGone = list.slice(0, last).every((m) => m.publishedAt < cutoff);
      if (latest.publishedAt < cutoff && (newer.has(key) || (latest.size === 0 && olderAllGone))) {
        doomed.push(latest.seq);
      }
    }
    for (let i = 0; i < doomed.length; i += SWEEP_CHUNK) {
      inTransaction(this.db, () => {
        for (const seq of doomed.slice(i, i + SWEEP_CHUNK)) s.deleteSeq.run(seq);
      });
    }
    return doomed.length;
  }

  // ---- closing

  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.pollTimer);
      clearInterval(this.sweepTimer);
      const followers = [...this.followersByTopic.values()].flatMap((set) => [...set]);
      await Promise.all([
        ...followers.map((follower) => follower.close()),
        ...[...this.consumers].map((consumer) => consumer.close()),
      ]);
      this.accepting = false;
      if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
      this.flushScheduled = false;
      this.flush();
      for (const state of this.states.values()) state.close();
      this.dbClosed = true;
      this.db.close();
    })();
    return this.closing;
  }
}
