/**
 * Query options and small helpers shared by the Cassandra history store's parts.
 *
 * Consistency: every read and write is LOCAL_QUORUM, so a read sees every acknowledged write of
 * the data center (and any quorum that saw a lightweight transaction commit); every conditional
 * write is a lightweight transaction at LOCAL_SERIAL, committed at LOCAL_QUORUM. Nothing here is
 * safe at a weaker level: the store's steps read state and then condition on it.
 */
import cassandra from "cassandra-driver";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";

const { consistencies, responseErrorCodes } = cassandra.types;

/** Reads, and writes that may be repeated (plain INSERT/UPDATE/DELETE of fixed values). */
export const IDEMPOTENT = { prepare: true, consistency: consistencies.localQuorum, isIdempotent: true };

/** Lightweight transactions: never repeated by the driver, the store decides after re-reading. */
export const CONDITIONAL = {
  prepare: true,
  consistency: consistencies.localQuorum,
  serialConsistency: consistencies.localSerial,
  isIdempotent: false,
};

/** A column left out of a prepared INSERT (a null would write a tombstone). */
export const UNSET = cassandra.types.unset;

/** CAS_WRITE_UNKNOWN (native protocol v5): a lightweight transaction that may or may not have applied. */
const CAS_WRITE_UNKNOWN = 0x1700;

/**
 * Whether a failed write may still have been applied (a timeout after the coordinator sent it).
 * The store then re-reads and decides, as every step is checked against what is stored.
 */
export function isUncertainWrite(err: unknown): boolean {
  if (err instanceof cassandra.errors.OperationTimedOutError) return true;
  const code = (err as { code?: unknown }).code;
  return code === responseErrorCodes.writeTimeout || code === CAS_WRITE_UNKNOWN;
}

export interface Statement {
  readonly query: string;
  readonly params: unknown[];
}

/** Statements of ONE partition as one unlogged batch: Cassandra applies it as one mutation. */
export async function applyToPartition(
  client: CassandraClient,
  statements: readonly Statement[],
): Promise<void> {
  if (statements.length === 0) return;
  if (statements.length === 1) {
    const [only] = statements;
    if (only !== undefined) await client.execute(only.query, only.params, IDEMPOTENT);
    return;
  }
  await client.batch(
    statements.map((s) => ({ query: s.query, params: s.params })),
    { ...IDEMPOTENT, logged: false },
  );
}

/** Runs `work` over `items` with at most `limit` in flight; results in item order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Every row of a query, fetched `pageSize` at a time, as they come. */
export async function* rowsOf(
  client: CassandraClient,
  query: string,
  params: unknown[],
  pageSize: number,
): AsyncGenerator<cassandra.types.Row> {
  let pageState: string | undefined;
  do {
    const result = await client.execute(query, params, {
      ...IDEMPOTENT,
      fetchSize: pageSize,
      ...(pageState === undefined ? {} : { pageState }),
    });
    yield* result.rows;
    pageState = result.pageState ?? undefined;
  } while (pageState !== undefined);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A short random pause before reading again what another writer is changing. */
export function backoff(attempt: number): Promise<void> {
  const ceiling = Math.min(50, 5 * 2 ** Math.min(attempt, 4));
  return sleep(2 + Math.random() * ceiling);
}

/** Runs `work` on consecutive slices of at most `size` items, one after another. */
export async function chunked<T>(
  items: readonly T[],
  size: number,
  work: (chunk: T[]) => Promise<unknown>,
): Promise<void> {
  for (let i = 0; i < items.length; i += size) await work(items.slice(i, i + size));
}

/**
 * Runs work for one key at a time in this process, in call order. Conditional writes on one
 * partition from concurrent callers (a popular sender's inbox getting hundreds of receipts at once,
 * one member's acks of several messages) would otherwise race: each Paxos round has one winner
 * and the losers retry, so N racers cost about N² rounds; taking turns costs N.
 */
export function createKeyedSerializer(): <T>(key: string, work: () => Promise<T>) => Promise<T> {
  const tails = new Map<string, Promise<void>>();
  return <T>(key: string, work: () => Promise<T>): Promise<T> => {
    const previous = tails.get(key) ?? Promise.resolve();
    const run = previous.then(work);
    const tail = run.then(
      () => {},
      () => {},
    );
    tails.set(key, tail);
    void tail.then(() => {
      if (tails.get(key) === tail) tails.delete(key);
    });
    return run;
  };
}
