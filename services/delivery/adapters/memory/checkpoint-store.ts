import type { CheckpointStore } from "../../domain/ports.ts";

export interface MemoryCheckpointStore extends CheckpointStore {
  readonly size: number;
  close(): void;
}

/**
 * Finished batches in process memory with a TTL: the embedded profile's stand-in for Redis, which
 * holds them in the cluster (`SET <batch id> 1 PX <ttl>`), shared by every delivery worker and
 * surviving a worker's crash. Here they live as long as the process, which is enough for what
 * they guard in one process: a handler that failed after pushing and whose event the broker
 * delivers again. The TTL only has to outlive the broker's redeliveries (default 1 h).
 */
export function createMemoryCheckpointStore(
  options: { readonly ttlMs?: number; readonly now?: () => number } = {},
): MemoryCheckpointStore {
  const ttlMs = options.ttlMs ?? 60 * 60 * 1000;
  const now = options.now ?? Date.now;
  const expiries = new Map<string, number>();

  // One TTL for all, and a re-recorded key moves to the end: insertion order is expiry order.
  const sweep = () => {
    const t = now();
    for (const [key, expiresAt] of expiries) {
      if (expiresAt > t) break;
      expiries.delete(key);
    }
  };
  const timer = setInterval(sweep, Math.min(ttlMs, 60_000));
  timer.unref();

  return {
    async has(batchId) {
      const expiresAt = expiries.get(batchId);
      return expiresAt !== undefined && expiresAt > now();
    },
    async record(batchId) {
      expiries.delete(batchId);
      expiries.set(batchId, now() + ttlMs);
    },
    get size() {
      return expiries.size;
    },
    close() {
      clearInterval(timer);
    },
  };
}
