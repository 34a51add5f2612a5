/**
 * The effects of a decided commit: every write a change makes besides its owner row (derived
 * tables, members, outbox events), kept as plain statements so that the very same writes can be
 * stored in the owner row (`pending`) by the lightweight transaction that decides the change and
 * replayed by anyone who finds them not yet applied.
 *
 * Replaying is safe at any time because every statement is idempotent: upserts and deletes at the
 * commit's own write timestamp (later commits of the same owner write with larger ones, so a late
 * replay loses to them), and outbox inserts under the event ids chosen once, at commit time.
 *
 * Cassandra refuses a multi-partition batch above `batch_size_fail_threshold` (50 KiB by
 * default) but exempts single-partition batches, so the statements are grouped by partition and
 * the groups packed into batches under a budget: a small change (every pair change) is one
 * logged batch, a large one (a 1,000-member group) several, and the `final` statements (the
 * "applied" marker) are written only after all of them.
 */
import cassandra from "cassandra-driver";
import type { CassandraStatement } from "../../../../lib/cassandra/outbox.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";

const { Long, TimeUuid } = cassandra.types;

export interface CommitEffects {
  /** Statements grouped by the partition they write; a group always goes into one batch. */
  readonly partitions: readonly (readonly CassandraStatement[])[];
  /** Written once every partition group is: marks the commit applied. */
  readonly final: readonly CassandraStatement[];
}

/** Collects a commit's statements by partition, in the order they were added. */
export class CommitEffectsBuilder {
  readonly #partitions = new Map<string, CassandraStatement[]>();

  add(partition: string, query: string, params: unknown[]): void {
    this.addStatement(partition, { query, params });
  }

  addStatement(partition: string, statement: CassandraStatement): void {
    let group = this.#partitions.get(partition);
    if (group === undefined) {
      group = [];
      this.#partitions.set(partition, group);
    }
    group.push(statement);
  }

  build(final: readonly CassandraStatement[]): CommitEffects {
    return { partitions: [...this.#partitions.values()], final };
  }
}

/**
 * Estimated bytes a multi-partition batch may carry: well under the server's 50 KiB default
 * failure threshold, which counts serialized mutations (keys, cells, timestamps) rather than
 * bound values (measured: a full budget of membership rows is about 14 KiB on the server). Such
 * batches, only written for large groups, exceed the 5 KiB warning threshold: a log line on the
 * server, traded for a few round trips instead of dozens.
 */
export const BATCH_BUDGET_BYTES = 16 * 1024;

export async function applyCommitEffects(
  client: CassandraClient,
  effects: CommitEffects,
  options: { readonly beforeLaterBatch?: () => void | Promise<void> } = {},
): Promise<void> {
  const batches = planBatches(effects);
  for (const [index, batch] of batches.entries()) {
    if (index > 0) await options.beforeLaterBatch?.();
    await client.batch(batch.statements.map(toQuery), { logged: batch.logged });
  }
}

interface PlannedBatch {
  readonly statements: readonly CassandraStatement[];
  /** A batch over several partitions goes through the batch log, so it lands whole or not at all. */
  readonly logged: boolean;
}

export function planBatches(effects: CommitEffects): PlannedBatch[] {
  const groups = effects.partitions.filter((group) => group.length > 0);
  const sizes = groups.map(groupSize);
  const total = sizes.reduce((a, b) => a + b, 0) + groupSize(effects.final);
  if (total <= BATCH_BUDGET_BYTES) {
    return [
      {
        statements: [...groups.flat(), ...effects.final],
        logged: groups.length + (effects.final.length > 0 ? 1 : 0) > 1,
      },
    ];
  }
  const batches: PlannedBatch[] = [];
  let current: CassandraStatement[][] = [];
  let currentSize = 0;
  const flush = () => {
    if (current.length > 0) batches.push({ statements: current.flat(), logged: current.length > 1 });
    current = [];
    currentSize = 0;
  };
  groups.forEach((group, index) => {
    const size = sizes[index] ?? 0;
    if (currentSize + size > BATCH_BUDGET_BYTES) flush();
    current.push([...group]);
    currentSize += size;
  });
  flush();
  if (effects.final.length > 0) batches.push({ statements: [...effects.final], logged: true });
  return batches;
}

function groupSize(group: readonly CassandraStatement[]): number {
  let size = 0;
  for (const statement of group) {
    size += 48;
    for (const param of statement.params) size += valueSize(param);
  }
  return size;
}

function valueSize(value: unknown): number {
  if (typeof value === "string") return Buffer.byteLength(value) + 8;
  if (Buffer.isBuffer(value)) return value.length + 8;
  if (value !== null && typeof value === "object" && !(value instanceof Date) && !(value instanceof Long)) {
    if (value instanceof TimeUuid) return 24;
    return Object.entries(value).reduce((sum, [k, v]) => sum + Buffer.byteLength(k) + valueSize(v), 8);
  }
  return 16;
}

function toQuery(statement: CassandraStatement) {
  return { query: statement.query, params: [...statement.params] };
}

/*
 * Stored form: JSON with each query text once and values tagged by driver type, so a replay binds
 * exactly what the first attempt bound (a timeuuid stays that timeuuid, a bigint a bigint).
 */
interface StoredEffects {
  readonly v: 1;
  readonly q: string[];
  readonly p: StoredStatement[][];
  readonly f: StoredStatement[];
}
type StoredStatement = [number, ...unknown[]];

export function encodeCommitEffects(effects: CommitEffects): Buffer {
  const queries: string[] = [];
  const indexes = new Map<string, number>();
  const encode = (statement: CassandraStatement): StoredStatement => {
    let index = indexes.get(statement.query);
    if (index === undefined) {
      index = queries.length;
      queries.push(statement.query);
      indexes.set(statement.query, index);
    }
    return [index, ...statement.params.map(encodeValue)];
  };
  const stored: StoredEffects = {
    v: 1,
    q: queries,
    p: effects.partitions.map((group) => group.map(encode)),
    f: effects.final.map(encode),
  };
  return Buffer.from(JSON.stringify(stored));
}

export function decodeCommitEffects(bytes: Buffer): CommitEffects {
  const stored = JSON.parse(bytes.toString("utf8")) as StoredEffects;
  if (stored.v !== 1) throw new Error(`unknown stored commit effects version ${String(stored.v)}`);
  const decode = ([index, ...params]: StoredStatement): CassandraStatement => {
    const query = stored.q[index];
    if (query === undefined) throw new Error(`stored commit effects refer to missing query ${index}`);
    return { query, params: params.map(decodeValue) };
  };
  return { partitions: stored.p.map((group) => group.map(decode)), final: stored.f.map(decode) };
}

function encodeValue(value: unknown): unknown {
  if (
    value === null ||
    typeof value === "string" ||
    typeof value === "number" ||
    typeof value === "boolean"
  ) {
    return value;
  }
  if (value instanceof TimeUuid) return { u: value.toString() };
  if (value instanceof Long) return { l: value.toString() };
  if (value instanceof Date) return { d: value.getTime() };
  if (Buffer.isBuffer(value)) return { b: value.toString("base64") };
  if (Array.isArray(value)) return { a: value.map(encodeValue) };
  if (typeof value === "object") {
    return { m: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(v)])) };
  }
  throw new Error(`cannot store a ${typeof value} bound value in commit effects`);
}

function decodeValue(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  const tagged = value as { u?: string; l?: string; d?: number; b?: string; a?: unknown[]; m?: object };
  if (tagged.u !== undefined) return TimeUuid.fromString(tagged.u);
  if (tagged.l !== undefined) return Long.fromString(tagged.l);
  if (tagged.d !== undefined) return new Date(tagged.d);
  if (tagged.b !== undefined) return Buffer.from(tagged.b, "base64");
  if (tagged.a !== undefined) return tagged.a.map(decodeValue);
  if (tagged.m !== undefined) {
    return Object.fromEntries(Object.entries(tagged.m).map(([k, v]) => [k, decodeValue(v)]));
  }
  throw new Error("unknown tagged value in stored commit effects");
}
