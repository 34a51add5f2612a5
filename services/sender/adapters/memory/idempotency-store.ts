import type { AcceptedRecord, IdempotencyStore } from "../../domain/ports.ts";

/**
 * Idempotency keys in process memory with a TTL: the embedded profile's stand-in for Redis, and,
 * like Redis without persistence, lost on restart (history's own dedup covers that case).
 */
export function createMemoryIdempotencyStore(
  options: { readonly ttlMs?: number; readonly now?: () => number } = {},
) {
  const ttlMs = options.ttlMs ?? 24 * 60 * 60 * 1000;
  const now = options.now ?? Date.now;
  const records = new Map<string, { readonly record: AcceptedRecord; readonly expiresAt: number }>();

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

  const store: IdempotencyStore & { close(): void; readonly size: number } = {
    async get(key) {
      const entry = records.get(key);
      if (entry === undefined || entry.expiresAt <= now()) return undefined;
      return entry.record;
    },
    async put(key, record) {
      records.delete(key);
      records.set(key, { record, expiresAt: now() + ttlMs });
    },
    close() {
      clearInterval(timer);
    },
    get size() {
      return records.size;
    },
  };
  return store;
}
