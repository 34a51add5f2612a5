import type { Redis } from "../../../../lib/redis/redis-client.ts";
import { defineRedisScript } from "../../../../lib/redis/redis-script.ts";
import type {
  DeviceActivity,
  DevicePresence,
  PresenceState,
  PresenceStore,
  UserPresenceRecord,
} from "../../domain/ports.ts";

export interface RedisPresenceStoreOptions {
  /** Put before every key, e.g. `parley:presence:`. */
  readonly keyPrefix: string;
  /** How long a user's last seen is kept after their last change. Default 30 days. */
  readonly recordRetentionMs?: number;
  /**
   * How long Redis keeps a user's device entries after the last of them expired, so a sweep can
   * still report them. Sweeps run every second, so this only matters when no delivery process
   * runs at all; then Redis drops the entries by itself. Default 1 h.
   */
  readonly sweepGraceMs?: number;
  /** Expired entries claimed per script call by `takeExpired`. Default 500. */
  readonly sweepBatch?: number;
  /** The clock the TTLs are computed from (the domain's). Default Date.now. */
  readonly now?: () => number;
}

/**
 * Claims expired entries for one sweeper: an entry is taken only if its expiry is still at or
 * before `now` (a refresh since the ZRANGEBYSCORE moved it) and nobody took it first, so of any
 * number of concurrent sweepers exactly one gets it.
 *
 * KEYS[1] the expiry index; KEYS[1 + i] the devices hash holding ARGV[1 + i]; ARGV[1] now.
 * Returns member, value, member, value...
 */
const CLAIM_EXPIRED = defineRedisScript(`
local now = tonumber(ARGV[1])
local taken = {}
for i = 2, #ARGV do
  local member = ARGV[i]
  local expiry = redis.call('ZSCORE', KEYS[1], member)
  if expiry and tonumber(expiry) <= now then
    redis.call('ZREM', KEYS[1], member)
    local value = redis.call('HGET', KEYS[i], member)
    if value then
      redis.call('HDEL', KEYS[i], member)
      taken[#taken + 1] = member
      taken[#taken + 1] = value
    end
  end
end
return taken
`);

/** (user, device, host) as a hash field and index member: JSON, so no id can forge a separator. */
type EntryId = [userId: string, deviceId: string, hostId: string];
type EntryValue = [activity: DeviceActivity, updatedAt: number, expiresAt: number];

/**
 * Presence in Redis, shared by every delivery replica:
 *
 * - `<prefix>devices:<user>`: a hash per user, one field per (device, host) entry holding its
 *   activity, report time and expiry. Readers see only entries whose expiry is after the time
 *   they ask about; Redis drops the whole hash `sweepGraceMs` after its last entry's expiry, so a
 *   user whose edge and every delivery process died leaves nothing behind.
 * - `<prefix>expiries`: a sorted set of every entry by expiry, for the sweep, which claims
 *   entries atomically (exactly once across replicas).
 * - `<prefix>user:<user>`: the last published state and last seen, expired by Redis
 *   `recordRetentionMs` after the last change.
 *
 * Round trips: upsert 1 (MULTI), remove 1 (MULTI), devicesOf 1 (HGETALL), takeExpired 2 per
 * batch (ZRANGEBYSCORE, then one script), userRecord 1 (GET), setUserRecord 1 (SET PX). Written
 * for one Redis (standalone or Sentinel): in a Redis Cluster the hashes and the index would need
 * one hash tag.
 */
export function createRedisPresenceStore(redis: Redis, options: RedisPresenceStoreOptions): PresenceStore {
  const { keyPrefix } = options;
  const retentionMs = String(options.recordRetentionMs ?? 30 * 24 * 60 * 60 * 1000);
  const graceMs = options.sweepGraceMs ?? 60 * 60 * 1000;
  const batch = options.sweepBatch ?? 500;
  const now = options.now ?? Date.now;
  const expiries = `${keyPrefix}expiries`;
  const devicesKey = (userId: string) => `${keyPrefix}devices:${userId}`;
  const recordKey = (userId: string) => `${keyPrefix}user:${userId}`;
  const idOf = (userId: string, deviceId: string, hostId: string) =>
    JSON.stringify([userId, deviceId, hostId] satisfies EntryId);

  const decode = (member: string, value: string): DevicePresence => {
    const [userId, deviceId, hostId] = JSON.parse(member) as EntryId;
    const [activity, updatedAt, expiresAt] = JSON.parse(value) as EntryValue;
    return { device: { userId, deviceId }, hostId, activity, updatedAt, expiresAt };
  };

  return {
    async upsert(entries) {
      if (entries.length === 0) return;
      const t = now();
      const multi = redis.multi();
      for (const entry of entries) {
        const key = devicesKey(entry.device.userId);
        const member = idOf(entry.device.userId, entry.device.deviceId, entry.hostId);
        const value: EntryValue = [entry.activity, entry.updatedAt, entry.expiresAt];
        const keepMs = String(Math.max(1, Math.ceil(entry.expiresAt - t + graceMs)));
        multi.hset(key, member, JSON.stringify(value));
        // NX starts the hash's TTL, GT only ever extends it: the hash outlives its latest entry.
        multi.call("PEXPIRE", key, keepMs, "NX");
        multi.call("PEXPIRE", key, keepMs, "GT");
        multi.zadd(expiries, entry.expiresAt, member);
      }
      await exec(multi);
    },

    async remove(device, hostId) {
      const member = idOf(device.userId, device.deviceId, hostId);
      await exec(redis.multi().hdel(devicesKey(device.userId), member).zrem(expiries, member));
    },

    async devicesOf(userId, t) {
      const fields = await redis.hgetall(devicesKey(userId));
      const live: DevicePresence[] = [];
      for (const [member, value] of Object.entries(fields)) {
        const entry = decode(member, value);
        if (entry.expiresAt > t) live.push(entry);
      }
      return live;
    },

    async takeExpired(t) {
      const taken: DevicePresence[] = [];
      for (;;) {
        const members = await redis.zrangebyscore(expiries, "-inf", t, "LIMIT", 0, batch);
        if (members.length === 0) break;
        const keys = members.map((member) => devicesKey((JSON.parse(member) as EntryId)[0]));
        const reply = (await CLAIM_EXPIRED.run(redis, [expiries, ...keys], [t, ...members])) as string[];
        for (let i = 0; i + 1 < reply.length; i += 2) {
          taken.push(decode(reply[i] as string, reply[i + 1] as string));
        }
        if (members.length < batch) break;
      }
      return taken;
    },

    async userRecord(userId) {
      const json = await redis.get(recordKey(userId));
      if (json === null) return undefined;
      const stored = JSON.parse(json) as { state: PresenceState; lastSeen?: number; changedAt: number };
      return { state: stored.state, lastSeen: stored.lastSeen, changedAt: stored.changedAt };
    },

    async setUserRecord(userId, record: UserPresenceRecord) {
      await redis.call("SET", recordKey(userId), JSON.stringify(record), "PX", retentionMs);
    },
  };
}

/** Runs a MULTI and fails if any of its commands failed (EXEC reports them one by one). */
async function exec(multi: ReturnType<Redis["multi"]>): Promise<void> {
  const results = await multi.exec();
  if (results === null) throw new Error("Redis discarded the transaction");
  for (const [err] of results) if (err !== null) throw err;
}
