import type { DevicePresence, DeviceRef, PresenceStore, UserPresenceRecord } from "../../domain/ports.ts";

export interface MemoryPresenceStore extends PresenceStore {
  close(): void;
}

/**
 * Presence in process memory: the embedded profile's stand-in for Redis (per-device entries with
 * their expiry, a sorted set of expiry times for the sweep, per-user records of the last state and
 * last seen with a retention TTL). Entries past their expiry are invisible at once, and removed by
 * `takeExpired` (the presence sweep) or by the retention sweep of user records.
 */
export function createMemoryPresenceStore(
  options: {
    /** How long a user's last seen is kept after their last change. Default 30 days. */
    readonly recordRetentionMs?: number;
    readonly now?: () => number;
  } = {},
): MemoryPresenceStore {
  const retentionMs = options.recordRetentionMs ?? 30 * 24 * 60 * 60 * 1000;
  const now = options.now ?? Date.now;
  /** `<user>/<device>@<host>` -> entry. */
  const entries = new Map<string, DevicePresence>();
  /** user -> keys of its entries. */
  const byUser = new Map<string, Set<string>>();
  const records = new Map<string, { record: UserPresenceRecord; keptUntil: number }>();

  const keyOf = (device: DeviceRef, hostId: string) => `${device.userId}/${device.deviceId}@${hostId}`;

  const drop = (key: string, entry: DevicePresence) => {
    entries.delete(key);
    const keys = byUser.get(entry.device.userId);
    keys?.delete(key);
    if (keys?.size === 0) byUser.delete(entry.device.userId);
  };

  const timer = setInterval(() => {
    const t = now();
    for (const [user, { keptUntil }] of records) {
      if (keptUntil <= t) records.delete(user);
    }
  }, 60_000);
  timer.unref();

  return {
    async upsert(list) {
      for (const entry of list) {
        const key = keyOf(entry.device, entry.hostId);
        entries.set(key, entry);
        let keys = byUser.get(entry.device.userId);
        if (keys === undefined) {
          keys = new Set();
          byUser.set(entry.device.userId, keys);
        }
        keys.add(key);
      }
    },
    async remove(device, hostId) {
      const key = keyOf(device, hostId);
      const entry = entries.get(key);
      if (entry !== undefined) drop(key, entry);
    },
    async devicesOf(userId, t) {
      const keys = byUser.get(userId);
      if (keys === undefined) return [];
      const live: DevicePresence[] = [];
      for (const key of keys) {
        const entry = entries.get(key);
        if (entry !== undefined && entry.expiresAt > t) live.push(entry);
      }
      return live;
    },
    async takeExpired(t) {
      const expired: DevicePresence[] = [];
      for (const [key, entry] of entries) {
        if (entry.expiresAt <= t) {
          expired.push(entry);
          drop(key, entry);
        }
      }
      return expired;
    },
    async userRecord(userId) {
      const kept = records.get(userId);
      return kept === undefined || kept.keptUntil <= now() ? undefined : kept.record;
    },
    async setUserRecord(userId, record) {
      records.set(userId, { record, keptUntil: now() + retentionMs });
    },
    close() {
      clearInterval(timer);
    },
  };
}
