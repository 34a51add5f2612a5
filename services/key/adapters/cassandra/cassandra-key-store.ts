/**
 * The KeyStore on Cassandra.
 *
 * Layout (migrations.ts): one partition per user holds the user's device rows and every unclaimed
 * one-time prekey of those devices, plus a static `version`. A Cassandra lightweight transaction
 * (LWT) covers one partition, so every change of a user, however many rows it touches, is ONE
 * conditional batch on that partition:
 *
 *   read the partition -> decide with domain/rules.ts (as the SQLite store does) -> batch the writes
 *   with `UPDATE ... SET version = v + 1 ... IF version = v`
 *
 * and a batch whose guard fails (someone changed the user in between) is read and decided again.
 * That gives each port method the SQLite store's serial semantics per user: the device limit, the
 * one-time prekey count, the last-resort flag and the PrekeysLow hourly limit can never be raced.
 *
 * One-time prekeys are claimed exactly once: a claim's batch deletes the prekey row `IF public_key =
 * <the key read>` in the same LWT as the version guard, so two claims can never both take a key (the
 * second one's conditions fail, it reads again and takes the next key or the last-resort key), and
 * the count drops in the same step. Claims of one user within this process are grouped: while one
 * batch is in flight, the claims that arrive wait and then go as one batch (each still gets its own
 * key, lowest id first, decided one after another as the SQLite store's transactions would be), so a
 * burst of claims on one device (a new member of a large group) costs a few LWTs instead of one
 * failed guard per claim per competitor. Competition remains only between processes.
 *
 * Events: the outbox (lib/cassandra/outbox.ts) lives in another partition, which an LWT cannot
 * reach, so a change writes its outbox inserts as a "pending commit" in the static `pending` column
 * of the same batch (pending-events.ts). After the batch is applied the committer writes them to
 * the outbox (a logged batch, idempotent: the rows keep the timeuuid ids they were given) and
 * clears `pending` with `IF version = v`. A committer that dies in between leaves them there; then
 *   - the next change of the user carries them over into its own `pending` and writes them, and
 *   - a read of the user (getDevice, deviceStatus, listings, a claim) that finds a pending commit
 *     older than `staleCommitMs` writes and clears it.
 * So an event exists if and only if its change does, possibly twice (consumers dedupe), never lost.
 *
 * A batch that times out may or may not have been applied. Each attempt writes its own `commit_id`;
 * the retry reads the partition at SERIAL and, finding its own commit_id, returns that attempt's
 * answer. If someone else changed the user meanwhile the attempt is decided again: a claim may then
 * have deleted a key nobody received (a lost key, never a key handed out twice).
 *
 * Prekey rows: a registration or identity rotation writes its one-time prekeys as a new numbered
 * set and deletes the old set with one range tombstone (rows written in the same batch share its
 * timestamp, so they must not sit under it); a claim reads from the device's `prekey_floor`, past
 * the tombstones of the keys claimed before it. Nothing has a TTL: the port keeps keys until they
 * are claimed, replaced or their device is removed.
 *
 * Consistency: reads LOCAL_QUORUM (the session's default: sees every acknowledged change), retries
 * after a failed guard read LOCAL_SERIAL (finishes any half-done LWT, so the next guard is likely
 * to hold); LWTs use `serialConsistency` (LOCAL_SERIAL by default: exactly once within one data
 * center; a deployment writing one user's keys from several data centers must pass SERIAL).
 */
import cassandra from "cassandra-driver";
import { applyMigrations } from "../../../../lib/cassandra/migrations.ts";
import type { CassandraOutbox, CassandraStatement } from "../../../../lib/cassandra/outbox.ts";
import { createCassandraOutbox } from "../../../../lib/cassandra/outbox.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import { consistencies } from "../../../../lib/cassandra/session.ts";
import { aborted } from "../../../../lib/errors.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import type {
  ClaimInput,
  ClaimResult,
  DevicePage,
  KeyStore,
  RegisterDeviceInput,
  RegisterDeviceResult,
  RotateIdentityKeyInput,
  RotateIdentityKeyResult,
  RotateSignedPrekeyInput,
  RotateSignedPrekeyResult,
  UploadResult,
} from "../../domain/key-store.ts";
import type {
  DeviceAddress,
  DeviceRecord,
  DeviceStatus,
  OneTimePrekey,
  PrekeyBundle,
} from "../../domain/model.ts";
import type { UploadDecision } from "../../domain/rules.ts";
import {
  claimOutcome,
  decideIdentityRotation,
  decideRegistration,
  decideRemoval,
  decideSignedPrekeyRotation,
  decideUpload,
} from "../../domain/rules.ts";
import type { StoredDevice } from "./device-rows.ts";
import { bytes, DEVICE_COLUMNS, deviceColumnValues, toNumber, toStoredDevice } from "./device-rows.ts";
import { keyMigrations, keyTables } from "./migrations.ts";
import { decodePending, encodePending } from "./pending-events.ts";

export interface CassandraKeyStoreOptions {
  /** A client bound to the keyspace (lib/cassandra/session.ts); the caller owns and shuts it down. */
  readonly client: CassandraClient;
  readonly logger: Logger;
  /** Prepended to the table names, so several stores can share a keyspace (tests). */
  readonly tablePrefix?: string;
  /** Of every LWT: LOCAL_SERIAL (default) or SERIAL when several data centers write keys. */
  readonly serialConsistency?: number;
  /** Claims of one user this process decides and writes in one batch at most (default 64). */
  readonly maxClaimGroup?: number;
  /** A read that finds a change's events still pending after this long writes them (default 10 s). */
  readonly staleCommitMs?: number;
  /** Fault injection for tests: runs after a change is applied and before its events are written. */
  readonly faults?: { readonly afterCommit?: () => void | Promise<void> };
}

export interface CassandraKeyStore extends KeyStore {
  readonly outbox: CassandraOutbox;
}

/** A change gives up after this long of failed guards (others kept changing the user). */
const CONTENTION_BUDGET_MS = 10_000;
/** Users read at once by activeDevices. */
const READ_CONCURRENCY = 32;

const STATIC_COLUMNS = ["version", "commit_id", "pending"] as const;

/** What a user's partition held when read. */
interface Snapshot {
  readonly version: number | undefined;
  readonly commitId: cassandra.types.TimeUuid | undefined;
  readonly pending: readonly CassandraStatement[];
  readonly devices: ReadonlyMap<string, StoredDevice>;
}

/** What a decision over a snapshot wants: an answer, and the writes and events behind it if any. */
type Decision<R> =
  | { readonly result: R }
  | {
      readonly result: R;
      readonly statements: readonly CassandraStatement[];
      readonly events: readonly OutboxEvent[];
    };

/** The reads of one decision disagreed (a change landed between them): decide again at SERIAL. */
class StaleRead extends Error {}

interface QueuedClaim {
  readonly input: ClaimInput;
  readonly resolve: (result: ClaimResult) => void;
  readonly reject: (err: unknown) => void;
}

export async function createCassandraKeyStore(options: CassandraKeyStoreOptions): Promise<CassandraKeyStore> {
  const { client, logger } = options;
  const prefix = options.tablePrefix ?? "";
  const tables = keyTables(prefix);
  await applyMigrations(client, prefix === "" ? "key" : `key:${prefix}`, keyMigrations(prefix), logger);
  const outbox = createCassandraOutbox(client, tables.outbox);
  const serialConsistency = options.serialConsistency ?? consistencies.localSerial;
  const staleCommitMs = options.staleCommitMs ?? 10_000;
  const maxClaimGroup = options.maxClaimGroup ?? 64;
  const T = tables.devices;

  const devicesQuery = `SELECT device_id, ${STATIC_COLUMNS.join(", ")}, ${DEVICE_COLUMNS.join(", ")} FROM ${T} WHERE user_id = ? AND kind = 0`;
  const deviceQuery = `${devicesQuery} AND device_id = ? AND prekey_set = 0 AND key_id = 0`;

  const staticsOf = (
    row: cassandra.types.Row | undefined,
  ): Pick<Snapshot, "version" | "commitId" | "pending"> => ({
    version: toNumber(row?.get("version")),
    commitId: (row?.get("commit_id") as cassandra.types.TimeUuid | null) ?? undefined,
    pending: decodePending(row?.get("pending") as Buffer | null),
  });

  async function readUser(userId: string, consistency: number): Promise<Snapshot> {
    const rows = await allRows(client, devicesQuery, [userId], consistency);
    let statics = staticsOf(rows[0]);
    if (rows.length === 0) {
      // Static columns come back only with the rows a query selects: read them alone (no device
      // was ever registered, so this normally finds nothing).
      const alone = await client.execute(
        `SELECT ${STATIC_COLUMNS.join(", ")} FROM ${T} WHERE user_id = ? LIMIT 1`,
        [userId],
        { consistency },
      );
      statics = staticsOf(alone.rows[0]);
    }
    const devices = new Map<string, StoredDevice>();
    for (const row of rows) {
      const device = toStoredDevice(userId, row);
      devices.set(device.deviceId, device);
    }
    return { ...statics, devices };
  }

  async function readDevice(address: DeviceAddress): Promise<StoredDevice | undefined> {
    const { rows } = await client.execute(deviceQuery, [address.userId, address.deviceId]);
    const row = rows[0];
    if (row === undefined) return undefined;
    await settleIfStale(address.userId, staticsOf(row));
    return toStoredDevice(address.userId, row);
  }

  /** Unclaimed one-time prekeys among `ids` (read as one range: a batch's ids are usually close). */
  async function storedPrekeys(
    userId: string,
    device: StoredDevice,
    ids: readonly number[],
    consistency: number,
  ): Promise<Map<number, Uint8Array>> {
    const stored = new Map<number, Uint8Array>();
    if (ids.length === 0) return stored;
    const wanted = new Set(ids);
    const rows = await allRows(
      client,
      `SELECT key_id, public_key FROM ${T} WHERE user_id = ? AND kind = 1 AND device_id = ? AND prekey_set = ? AND key_id >= ? AND key_id <= ?`,
      [userId, device.deviceId, device.prekeySet, Math.min(...ids), Math.max(...ids)],
      consistency,
    );
    for (const row of rows) {
      const id = toNumber(row.get("key_id")) as number;
      if (wanted.has(id)) stored.set(id, bytes(row.get("public_key")));
    }
    return stored;
  }

  /** The `limit` lowest-id unclaimed one-time prekeys of a device. */
  async function lowestPrekeys(
    userId: string,
    device: StoredDevice,
    limit: number,
    consistency: number,
  ): Promise<OneTimePrekey[]> {
    if (limit === 0) return [];
    const { rows } = await client.execute(
      `SELECT key_id, public_key FROM ${T} WHERE user_id = ? AND kind = 1 AND device_id = ? AND prekey_set = ? AND key_id > ? LIMIT ?`,
      [userId, device.deviceId, device.prekeySet, device.prekeyFloor, limit],
      { consistency },
    );
    return rows.map((row) => ({
      keyId: toNumber(row.get("key_id")) as number,
      publicKey: bytes(row.get("public_key")),
    }));
  }

  /** Writes a committed change's events to the outbox and clears them from the user's partition. */
  async function writePending(userId: string, version: number, pending: readonly CassandraStatement[]) {
    if (pending.length === 0) return;
    try {
      await client.batch(
        pending.map((s) => ({ query: s.query, params: s.params })),
        { logged: true },
      );
      await client.execute(
        `UPDATE ${T} SET pending = null WHERE user_id = ? IF version = ?`,
        [userId, version],
        {
          serialConsistency,
        },
      );
    } catch (err) {
      logger.warn(
        { err, userId },
        "the events of a committed key change are still pending; the next change or read of the user writes them",
      );
    }
  }

  async function settleIfStale(
    userId: string,
    statics: Pick<Snapshot, "version" | "commitId" | "pending">,
  ): Promise<void> {
    if (statics.pending.length === 0 || statics.version === undefined || statics.commitId === undefined)
      return;
    // A young pending commit is being written by its committer right now.
    if (Date.now() - statics.commitId.getDate().getTime() < staleCommitMs) return;
    await writePending(userId, statics.version, statics.pending);
  }

  /**
   * Reads the user, decides and writes the decision under the version guard, again and again until
   * the guard holds (or the contention budget is spent). `decide` may run several times.
   */
  async function transact<R>(
    userId: string,
    decide: (snapshot: Snapshot, consistency: number) => Promise<Decision<R>>,
  ): Promise<R> {
    const attempts = new Map<string, R>();
    const deadline = Date.now() + CONTENTION_BUDGET_MS;
    let serial = false;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        if (Date.now() > deadline) {
          throw aborted("CONCURRENT_KEY_CHANGE", "the user's keys kept changing concurrently; retry", {
            metadata: { userId },
          });
        }
        await sleep(Math.random() * Math.min(100, 2 ** attempt));
      }
      const consistency = serial ? serialConsistency : consistencies.localQuorum;
      const snapshot = await readUser(userId, consistency);
      const earlier = snapshot.commitId === undefined ? undefined : snapshot.commitId.toString();
      if (earlier !== undefined && attempts.has(earlier)) {
        // An attempt that timed out was applied after all.
        await writePending(userId, snapshot.version as number, snapshot.pending);
        return attempts.get(earlier) as R;
      }
      let decision: Decision<R>;
      try {
        decision = await decide(snapshot, consistency);
      } catch (err) {
        if (!(err instanceof StaleRead)) throw err;
        serial = true;
        continue;
      }
      if (!("statements" in decision)) {
        await settleIfStale(userId, snapshot);
        return decision.result;
      }
      const commitId = cassandra.types.TimeUuid.now();
      const version = (snapshot.version ?? 0) + 1;
      // Events still pending from an earlier change go along with this one's.
      const pending = [...snapshot.pending, ...decision.events.map((e) => outbox.appendStatement(e))];
      const guard = {
        query: `UPDATE ${T} SET version = ?, commit_id = ?, pending = ? WHERE user_id = ? IF version = ?`,
        params: [version, commitId, encodePending(pending), userId, snapshot.version ?? null],
      };
      attempts.set(commitId.toString(), decision.result);
      let applied: boolean;
      try {
        const result = await client.batch(
          [guard, ...decision.statements].map((s) => ({ query: s.query, params: s.params })),
          { serialConsistency },
        );
        applied = result.wasApplied();
      } catch (err) {
        if (!outcomeUnknown(err)) throw err;
        logger.warn({ err, userId }, "a key change timed out; reading whether it was applied");
        serial = true;
        continue;
      }
      if (!applied) {
        serial = true;
        continue;
      }
      await options.faults?.afterCommit?.();
      await writePending(userId, version, pending);
      return decision.result;
    }
  }

  /** Upload of one-time prekeys into a device's current set (also a repeated registration's). */
  async function decideUploadWrites(
    userId: string,
    stored: StoredDevice,
    device: DeviceRecord,
    batch: readonly OneTimePrekey[],
    max: number,
    now: Date,
    consistency: number,
  ): Promise<{ readonly decision: UploadDecision; readonly statements: CassandraStatement[] }> {
    const decision = decideUpload({
      device,
      batch,
      stored: await storedPrekeys(
        userId,
        stored,
        batch.map((k) => k.keyId),
        consistency,
      ),
      max,
      now,
    });
    if (decision.kind !== "upload" || decision.insert.length === 0) return { decision, statements: [] };
    const lowest = Math.min(...decision.insert.map((k) => k.keyId));
    return {
      decision,
      statements: [
        // IF NOT EXISTS: a key the read missed (it raced this one) fails the batch instead of
        // being overwritten.
        ...decision.insert.map((k) => insertPrekey(userId, stored.deviceId, stored.prekeySet, k, true)),
        {
          query: `UPDATE ${T} SET one_time_prekey_count = ?, last_resort_used = ?, prekey_floor = ? WHERE user_id = ? AND kind = 0 AND device_id = ? AND prekey_set = 0 AND key_id = 0`,
          params: [
            decision.count,
            decision.lastResortPrekeyUsed,
            Math.min(stored.prekeyFloor, lowest - 1),
            userId,
            stored.deviceId,
          ],
        },
      ],
    };
  }

  function insertPrekey(
    userId: string,
    deviceId: string,
    set: number,
    key: OneTimePrekey,
    ifNotExists: boolean,
  ): CassandraStatement {
    return {
      query: `INSERT INTO ${T} (user_id, kind, device_id, prekey_set, key_id, public_key) VALUES (?, 1, ?, ?, ?, ?)${ifNotExists ? " IF NOT EXISTS" : ""}`,
      params: [userId, deviceId, set, key.keyId, Buffer.from(key.publicKey)],
    };
  }

  function upsertDevice(device: DeviceRecord, prekeySet: number, prekeyFloor: number): CassandraStatement {
    const values = deviceColumnValues(device, prekeySet, prekeyFloor);
    return {
      query: `INSERT INTO ${T} (user_id, kind, device_id, prekey_set, key_id, ${DEVICE_COLUMNS.join(", ")}) VALUES (?, 0, ?, 0, 0, ${DEVICE_COLUMNS.map(() => "?").join(", ")})`,
      params: [device.userId, device.deviceId, ...DEVICE_COLUMNS.map((c) => values[c])],
    };
  }

  /** A device's one-time prekeys replaced by `keys` in a new set; the old set goes in one tombstone. */
  function replacePrekeys(
    userId: string,
    stored: StoredDevice | undefined,
    deviceId: string,
    keys: readonly OneTimePrekey[],
  ): { readonly set: number; readonly statements: CassandraStatement[] } {
    const set = (stored?.prekeySet ?? 0) + 1;
    const statements: CassandraStatement[] = keys.map((k) => insertPrekey(userId, deviceId, set, k, false));
    if (stored !== undefined) {
      statements.push({
        query: `DELETE FROM ${T} WHERE user_id = ? AND kind = 1 AND device_id = ? AND prekey_set = ?`,
        params: [userId, deviceId, stored.prekeySet],
      });
    }
    return { set, statements };
  }

  function decideClaims(
    userId: string,
    inputs: readonly ClaimInput[],
  ): (snapshot: Snapshot, consistency: number) => Promise<Decision<ClaimResult[]>> {
    return async (snapshot, consistency) => {
      const active = activeRecords(snapshot);
      const plans = inputs.map((input): { readonly missing: string } | { readonly devices: string[] } => {
        if (input.deviceIds === undefined) {
          return {
            devices: active.map((d) => d.deviceId).filter((id) => id !== input.excludeDeviceId),
          };
        }
        const missing = input.deviceIds.find((id) => snapshot.devices.get(id)?.record === undefined);
        if (missing !== undefined) return { missing };
        return { devices: input.deviceIds.filter((id) => id !== input.excludeDeviceId) };
      });

      const wanted = new Map<string, number>();
      for (const plan of plans) {
        if ("devices" in plan) for (const id of plan.devices) wanted.set(id, (wanted.get(id) ?? 0) + 1);
      }
      const candidates = new Map<string, OneTimePrekey[]>();
      await Promise.all(
        [...wanted].map(async ([deviceId, claims]) => {
          const stored = snapshot.devices.get(deviceId) as StoredDevice;
          const expected = Math.min(claims, (stored.record as DeviceRecord).oneTimePrekeyCount);
          const keys = await lowestPrekeys(userId, stored, expected, consistency);
          // The count says more keys are there: the device row was read after a change that the
          // prekey read did not see yet.
          if (keys.length < expected) throw new StaleRead();
          candidates.set(deviceId, keys);
        }),
      );

      const current = new Map<string, DeviceRecord>();
      const floors = new Map<string, number>();
      const statements: CassandraStatement[] = [];
      const events: OutboxEvent[] = [];
      const results = plans.map((plan, i): ClaimResult => {
        if ("missing" in plan) return { kind: "device_not_found", deviceId: plan.missing };
        const input = inputs[i] as ClaimInput;
        const bundles: PrekeyBundle[] = [];
        for (const deviceId of plan.devices) {
          const stored = snapshot.devices.get(deviceId) as StoredDevice;
          const device = current.get(deviceId) ?? (stored.record as DeviceRecord);
          const claimed = candidates.get(deviceId)?.shift();
          if (claimed !== undefined) {
            statements.push({
              query: `DELETE FROM ${T} WHERE user_id = ? AND kind = 1 AND device_id = ? AND prekey_set = ? AND key_id = ? IF public_key = ?`,
              params: [userId, deviceId, stored.prekeySet, claimed.keyId, Buffer.from(claimed.publicKey)],
            });
            floors.set(deviceId, claimed.keyId);
          }
          const outcome = claimOutcome(device, claimed, input);
          current.set(deviceId, {
            ...device,
            oneTimePrekeyCount: outcome.oneTimePrekeyCount,
            lastResortPrekeyUsed: outcome.lastResortPrekeyUsed,
            prekeysLowNotifiedAt: outcome.prekeysLowNotifiedAt,
          });
          events.push(...outcome.events);
          bundles.push(outcome.bundle);
        }
        return { kind: "claimed", bundles };
      });

      for (const [deviceId, device] of current) {
        const stored = snapshot.devices.get(deviceId) as StoredDevice;
        const before = stored.record as DeviceRecord;
        const floor = floors.get(deviceId) ?? stored.prekeyFloor;
        if (
          device.oneTimePrekeyCount === before.oneTimePrekeyCount &&
          device.lastResortPrekeyUsed === before.lastResortPrekeyUsed &&
          device.prekeysLowNotifiedAt?.getTime() === before.prekeysLowNotifiedAt?.getTime()
        ) {
          continue;
        }
        statements.push({
          query: `UPDATE ${T} SET one_time_prekey_count = ?, last_resort_used = ?, prekeys_low_notified_at = ?, prekey_floor = ? WHERE user_id = ? AND kind = 0 AND device_id = ? AND prekey_set = 0 AND key_id = 0`,
          params: [
            device.oneTimePrekeyCount,
            device.lastResortPrekeyUsed,
            device.prekeysLowNotifiedAt ?? null,
            floor,
            userId,
            deviceId,
          ],
        });
      }
      if (statements.length === 0 && events.length === 0) return { result: results };
      return { result: results, statements, events };
    };
  }

  const claimQueues = new Map<string, QueuedClaim[]>();

  async function drainClaims(userId: string, queue: QueuedClaim[]): Promise<void> {
    while (queue.length > 0) {
      const group = queue.splice(0, maxClaimGroup);
      try {
        const results = await transact(
          userId,
          decideClaims(
            userId,
            group.map((c) => c.input),
          ),
        );
        group.forEach((claim, i) => {
          claim.resolve(results[i] as ClaimResult);
        });
      } catch (err) {
        for (const claim of group) claim.reject(err);
      }
    }
    claimQueues.delete(userId);
  }

  return {
    outbox,

    registerDevice(input: RegisterDeviceInput): Promise<RegisterDeviceResult> {
      const { userId, deviceId } = input.address;
      return transact(userId, async (snapshot, consistency): Promise<Decision<RegisterDeviceResult>> => {
        const stored = snapshot.devices.get(deviceId);
        const existing = stored?.record;
        const activeDevices = activeRecords(snapshot).length;
        const decision = decideRegistration({
          existing,
          activeDevices,
          previousKeyVersion: stored?.keyVersion ?? 0,
          input,
        });
        switch (decision.kind) {
          case "device_limit":
            return { result: { kind: "device_limit", activeDevices } };
          case "identity_conflict":
            return { result: { kind: "identity_conflict" } };
          case "create": {
            const { next } = decision.update;
            const replaced = replacePrekeys(
              userId,
              stored,
              deviceId,
              decision.update.replaceOneTimePrekeys ?? [],
            );
            return {
              result: { kind: "registered", device: next, created: true },
              statements: [upsertDevice(next, replaced.set, 0), ...replaced.statements],
              events: decision.update.events,
            };
          }
          case "existing": {
            const device = existing as DeviceRecord;
            const { decision: upload, statements } = await decideUploadWrites(
              userId,
              stored as StoredDevice,
              device,
              input.oneTimePrekeys,
              input.maxOneTimePrekeys,
              input.now,
              consistency,
            );
            if (upload.kind === "prekey_limit")
              return { result: { kind: "prekey_limit", count: upload.count } };
            if (upload.kind === "prekey_id_in_use") {
              return { result: { kind: "prekey_id_in_use", keyId: upload.keyId } };
            }
            const result: RegisterDeviceResult = {
              kind: "registered",
              device: {
                ...device,
                oneTimePrekeyCount: upload.count,
                lastResortPrekeyUsed: upload.lastResortPrekeyUsed,
              },
              created: false,
            };
            return statements.length === 0 ? { result } : { result, statements, events: [] };
          }
        }
      });
    },

    async getDevice(address) {
      return (await readDevice(address))?.record;
    },

    async deviceStatus(address): Promise<DeviceStatus> {
      // LOCAL_QUORUM (not ONE), so a removal once acknowledged is seen by every edge.
      const device = await readDevice(address);
      if (device === undefined) return { state: "unknown" };
      if (device.removedAt !== undefined) {
        return { state: "removed", removedAt: device.removedAt, keyVersion: device.keyVersion };
      }
      return { state: "active", registeredAt: device.createdAt, keyVersion: device.keyVersion };
    },

    async listDevices(userId: string, page: DevicePage) {
      const snapshot = await readUser(userId, consistencies.localQuorum);
      await settleIfStale(userId, snapshot);
      const after = page.after;
      const devices = activeRecords(snapshot).filter(
        (d) =>
          after === undefined ||
          d.createdAt.getTime() > after.createdAt.getTime() ||
          (d.createdAt.getTime() === after.createdAt.getTime() && compareIds(d.deviceId, after.deviceId) > 0),
      );
      return devices.slice(0, page.limit);
    },

    async activeDevices(userIds) {
      const result = new Map<string, DeviceRecord[]>();
      const unique = [...new Set(userIds)];
      let next = 0;
      const worker = async () => {
        while (next < unique.length) {
          const userId = unique[next++] as string;
          const snapshot = await readUser(userId, consistencies.localQuorum);
          await settleIfStale(userId, snapshot);
          const devices = activeRecords(snapshot);
          if (devices.length > 0) result.set(userId, devices);
        }
      };
      await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, unique.length) }, worker));
      return result;
    },

    removeDevice({ address, now, traceparent }) {
      return transact(
        address.userId,
        async (snapshot): Promise<Decision<{ removedAt: Date } | undefined>> => {
          const device = snapshot.devices.get(address.deviceId)?.record;
          if (device === undefined) return { result: undefined };
          const removal = decideRemoval(device, now, traceparent);
          return {
            result: { removedAt: now },
            statements: [
              {
                // A removed device keeps only what identifies it: its keys are deleted.
                query: `UPDATE ${T} SET removed_at = ?, key_version = ?, identity_key = null, identity_key_created_at = null,
                prev_identity_key = null, prev_identity_key_valid_until = null,
                spk_id = null, spk_public_key = null, spk_signature = null, spk_created_at = null,
                prev_spk_id = null, prev_spk_public_key = null, prev_spk_signature = null, prev_spk_valid_until = null,
                lrk_id = null, lrk_public_key = null, lrk_signature = null, lrk_created_at = null,
                prev_lrk_id = null, prev_lrk_public_key = null, prev_lrk_signature = null, prev_lrk_valid_until = null,
                last_resort_used = false, prekeys_low_notified_at = null, one_time_prekey_count = 0, prekey_floor = 0
                WHERE user_id = ? AND kind = 0 AND device_id = ? AND prekey_set = 0 AND key_id = 0`,
                params: [now, removal.keyVersion, address.userId, address.deviceId],
              },
              {
                query: `DELETE FROM ${T} WHERE user_id = ? AND kind = 1 AND device_id = ?`,
                params: [address.userId, address.deviceId],
              },
            ],
            events: removal.events,
          };
        },
      );
    },

    uploadOneTimePrekeys({ address, prekeys, maxOneTimePrekeys, now }): Promise<UploadResult> {
      return transact(address.userId, async (snapshot, consistency): Promise<Decision<UploadResult>> => {
        const stored = snapshot.devices.get(address.deviceId);
        if (stored?.record === undefined) return { result: { kind: "device_not_found" } };
        const { decision, statements } = await decideUploadWrites(
          address.userId,
          stored,
          stored.record,
          prekeys,
          maxOneTimePrekeys,
          now,
          consistency,
        );
        if (decision.kind !== "upload") return { result: decision };
        const result: UploadResult = {
          kind: "uploaded",
          count: decision.count,
          inserted: decision.insert.length,
        };
        return statements.length === 0 ? { result } : { result, statements, events: [] };
      });
    },

    claimPrekeyBundles(input: ClaimInput): Promise<ClaimResult> {
      return new Promise((resolve, reject) => {
        const claim = { input, resolve, reject };
        const queue = claimQueues.get(input.userId);
        if (queue !== undefined) {
          queue.push(claim);
          return;
        }
        const fresh = [claim];
        claimQueues.set(input.userId, fresh);
        void drainClaims(input.userId, fresh);
      });
    },

    rotateIdentityKey(input: RotateIdentityKeyInput): Promise<RotateIdentityKeyResult> {
      const { userId, deviceId } = input.address;
      return transact(userId, async (snapshot): Promise<Decision<RotateIdentityKeyResult>> => {
        const stored = snapshot.devices.get(deviceId);
        if (stored?.record === undefined) return { result: { kind: "device_not_found" } };
        const decision = decideIdentityRotation(stored.record, input);
        if (decision.kind === "identity_unchanged") return { result: decision };
        if (decision.kind === "repeated") return { result: decision.result };
        const replaced = replacePrekeys(
          userId,
          stored,
          deviceId,
          decision.update.replaceOneTimePrekeys ?? [],
        );
        return {
          result: decision.result,
          statements: [upsertDevice(decision.update.next, replaced.set, 0), ...replaced.statements],
          events: decision.update.events,
        };
      });
    },

    rotateSignedPrekey(input: RotateSignedPrekeyInput): Promise<RotateSignedPrekeyResult> {
      const { userId, deviceId } = input.address;
      return transact(userId, async (snapshot): Promise<Decision<RotateSignedPrekeyResult>> => {
        const stored = snapshot.devices.get(deviceId);
        if (stored?.record === undefined) return { result: { kind: "device_not_found" } };
        const lastResortId = input.lastResortPrekey?.keyId;
        // At SERIAL: the batch cannot check that a row is absent, so this read must not miss a
        // one-time prekey the device read already counts (a rare request: the cost is fine).
        const oneTimeIds = new Set(
          lastResortId === undefined
            ? []
            : (await storedPrekeys(userId, stored, [lastResortId], serialConsistency)).keys(),
        );
        const decision = decideSignedPrekeyRotation(stored.record, input, oneTimeIds);
        switch (decision.kind) {
          case "identity_changed":
          case "prekey_id_in_use":
            return { result: decision };
          case "repeated":
            return { result: decision.result };
          case "rotate":
            return {
              result: decision.result,
              statements: [upsertDevice(decision.update.next, stored.prekeySet, stored.prekeyFloor)],
              events: decision.update.events,
            };
        }
      });
    },

    close() {
      // The client is the caller's; claims in flight finish on it.
    },
  };
}

/** A user's active devices, oldest first (by creation time, then id). */
function activeRecords(snapshot: Snapshot): DeviceRecord[] {
  const devices: DeviceRecord[] = [];
  for (const stored of snapshot.devices.values())
    if (stored.record !== undefined) devices.push(stored.record);
  return devices.sort(
    (a, b) => a.createdAt.getTime() - b.createdAt.getTime() || compareIds(a.deviceId, b.deviceId),
  );
}

/** Byte order of the UTF-8 ids, as Cassandra (and SQLite) order text. */
function compareIds(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Whether a failed LWT may still have been applied (the server or the client timed out). */
function outcomeUnknown(err: unknown): boolean {
  const { errors, types } = cassandra;
  if (err instanceof errors.OperationTimedOutError || err instanceof errors.NoHostAvailableError) return true;
  return err instanceof errors.ResponseError && err.code === types.responseErrorCodes.writeTimeout;
}

/** Every row of a single-partition query, page by page. */
async function allRows(
  client: CassandraClient,
  query: string,
  params: unknown[],
  consistency: number,
): Promise<cassandra.types.Row[]> {
  const rows: cassandra.types.Row[] = [];
  let pageState: string | undefined;
  do {
    const page = await client.execute(query, params, {
      consistency,
      ...(pageState === undefined ? {} : { pageState }),
    });
    rows.push(...page.rows);
    pageState = page.pageState ?? undefined;
  } while (pageState !== undefined);
  return rows;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
