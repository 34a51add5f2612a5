import type { AcceptedRecord, IdempotencyStore } from "../../domain/ports.ts";

/**
 * Idempotency keys in process memory with a TTL: lost on restart, like Redis without persistence
 * (history's own dedup covers that case). The embedded mesh uses the SQLite store instead; this
 * one suits a throwaway process.
 */
export function createMemoryIdempotencyStore(
  options: { readonly ttlMs?: number; readonly now?: () => number } = {},
): IdempotencyStore & { close(): void; readonly size: number } {
  const ttlMs = options.ttlMs ?? 24 * 60 * 60 * 1000;
  const now = options.now ?? Date.now;
  const records = new Map<string, { record: AcceptedRecord; readonly expiresAt: number }>();

  // Insertion order is expiry order (one TTL for all), so sweeping stops at the first live entry.
  const sweep = () => {
    const t = now();
    for (const [key, entry] of records) {
      if (entry.expiresAt > t) break;
      records.delete(key);
    }
  };
  const timer = setInterval(sweep, Math.min(ttlMs, 60_000));
  timer.unref();
  const live = (key: string) => {
    const entry = records.get(key);
    return entry === undefined || entry.expiresAt <= now() ? undefined : entry;
  };

  return {
    async get(key) {
      return live(key)?.record;
    },
    async reserve(key, record) {
      const held = live(key);
      if (held !== undefined) return held.record;
      records.delete(key);
      records.set(key, { record, expiresAt: now() + ttlMs });
      return record;
    },
    async markPublished(key) {
      const held = live(key);
      if (held !== undefined) held.record = { ...held.record, published: true };
    },
    close() {
      clearInterval(timer);
    },
    get size() {
      return records.size;
    },
  };
}
