import type { DatabaseSync, SQLInputValue } from "node:sqlite";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import { createSqliteOutbox } from "../../../../lib/outbox.ts";
import { inTransaction, migrate, openSqlite } from "../../../../lib/sqlite.ts";
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
  DeviceIdentity,
  DeviceRecord,
  DeviceStatus,
  OneTimePrekey,
  PrekeyBundle,
  PreviousSignedPrekey,
} from "../../domain/model.ts";
import type { DeviceUpdate, UploadDecision } from "../../domain/rules.ts";
import {
  claimOutcome,
  decideIdentityRotation,
  decideRegistration,
  decideRemoval,
  decideSignedPrekeyRotation,
  decideUpload,
} from "../../domain/rules.ts";
import { KEY_MIGRATIONS } from "./migrations.ts";

export type SqliteKeyStoreOptions =
  /** A database the caller opened (and closes): the store only adds its tables. */
  | { readonly db: DatabaseSync }
  /** A file the store opens and closes itself (`:memory:` for tests). */
  | { readonly path: string };

/** The outbox table the key service's relay reads. */
export const KEY_OUTBOX_TABLE = "key_outbox";

/**
 * The embedded KeyStore on node:sqlite. Every method runs synchronously inside one
 * `BEGIN IMMEDIATE` transaction, so within a process nothing interleaves with it, and across
 * processes sharing the file SQLite's write lock serializes it: a claim's read and delete of a
 * one-time prekey are one step, as are every check and the write it guards. Events go to the
 * outbox table in the same transaction.
 */
export function createSqliteKeyStore(options: SqliteKeyStoreOptions): KeyStore {
  const ownsDb = "path" in options;
  const db = "path" in options ? openSqlite(options.path) : options.db;
  migrate(db, "key", KEY_MIGRATIONS);
  const outbox = createSqliteOutbox(db, KEY_OUTBOX_TABLE);
  const q = statements(db);

  const readRow = (address: DeviceAddress): Row | undefined =>
    q.selectDevice.get(address.userId, address.deviceId) as Row | undefined;
  const readActive = (address: DeviceAddress): DeviceRecord | undefined => {
    const row = readRow(address);
    return row === undefined || row.removed_at !== null ? undefined : toDevice(row);
  };
  const append = (events: readonly OutboxEvent[]) => {
    for (const event of events) outbox.append(event);
  };
  const writeDevice = (device: DeviceRecord) => {
    q.upsertDevice.run(...deviceColumns(device));
  };
  const applyUpdate = (update: DeviceUpdate) => {
    const { next } = update;
    if (update.replaceOneTimePrekeys !== undefined) {
      q.deleteOneTimePrekeys.run(next.userId, next.deviceId);
      for (const key of update.replaceOneTimePrekeys) {
        q.insertOneTimePrekey.run(next.userId, next.deviceId, key.keyId, key.publicKey);
      }
    }
    writeDevice(next);
    append(update.events);
  };
  const storedOneTimeKeys = (address: DeviceAddress, ids: readonly number[]) => {
    const stored = new Map<number, Uint8Array>();
    for (const id of ids) {
      const row = q.selectOneTimePrekey.get(address.userId, address.deviceId, id) as
        | { public_key: Uint8Array }
        | undefined;
      if (row !== undefined) stored.set(id, new Uint8Array(row.public_key));
    }
    return stored;
  };
  const upload = (
    device: DeviceRecord,
    batch: readonly OneTimePrekey[],
    max: number,
    now: Date,
  ): UploadDecision => {
    const decision = decideUpload({
      device,
      batch,
      stored: storedOneTimeKeys(
        device,
        batch.map((k) => k.keyId),
      ),
      max,
      now,
    });
    if (decision.kind === "upload") {
      for (const key of decision.insert) {
        q.insertOneTimePrekey.run(device.userId, device.deviceId, key.keyId, key.publicKey);
      }
      q.updateCounters.run(
        decision.count,
        decision.lastResortPrekeyUsed ? 1 : 0,
        ms(device.prekeysLowNotifiedAt),
        device.userId,
        device.deviceId,
      );
    }
    return decision;
  };

  return {
    outbox,

    async registerDevice(input: RegisterDeviceInput): Promise<RegisterDeviceResult> {
      return inTransaction(db, (): RegisterDeviceResult => {
        const row = readRow(input.address);
        const existing = row === undefined || row.removed_at !== null ? undefined : toDevice(row);
        const activeDevices = Number((q.countActive.get(input.address.userId) as { n: number }).n);
        const decision = decideRegistration({
          existing,
          activeDevices,
          previousKeyVersion: row?.key_version ?? 0,
          input,
        });
        switch (decision.kind) {
          case "device_limit":
            return { kind: "device_limit", activeDevices };
          case "identity_conflict":
            return { kind: "identity_conflict" };
          case "create":
            applyUpdate(decision.update);
            return { kind: "registered", device: decision.update.next, created: true };
          case "existing": {
            const device = existing as DeviceRecord;
            const uploaded = upload(device, input.oneTimePrekeys, input.maxOneTimePrekeys, input.now);
            if (uploaded.kind !== "upload") {
              return uploaded.kind === "prekey_limit"
                ? { kind: "prekey_limit", count: uploaded.count }
                : { kind: "prekey_id_in_use", keyId: uploaded.keyId };
            }
            return { kind: "registered", device: readActive(input.address) as DeviceRecord, created: false };
          }
        }
      });
    },

    async getDevice(address) {
      return readActive(address);
    },

    async deviceStatus(address): Promise<DeviceStatus> {
      const row = q.selectStatus.get(address.userId, address.deviceId) as
        | { removed_at: number | null; created_at: number; key_version: number }
        | undefined;
      if (row === undefined) return { state: "unknown" };
      if (row.removed_at !== null) {
        return { state: "removed", removedAt: new Date(row.removed_at), keyVersion: row.key_version };
      }
      return { state: "active", registeredAt: new Date(row.created_at), keyVersion: row.key_version };
    },

    async listDevices(userId: string, page: DevicePage) {
      const rows =
        page.after === undefined
          ? q.listFirst.all(userId, page.limit)
          : q.listAfter.all(
              userId,
              page.after.createdAt.getTime(),
              page.after.createdAt.getTime(),
              page.after.deviceId,
              page.limit,
            );
      return (rows as unknown as Row[]).map(toDevice);
    },

    async activeDevices(userIds) {
      const result = new Map<string, DeviceIdentity[]>();
      // The identity columns only (a quarter of the time of every column for 5,000 devices), and
      // the users as one JSON array: one statement for any number of them.
      const rows = q.activeIdentities.all(JSON.stringify([...new Set(userIds)])) as unknown as IdentityRow[];
      for (const row of rows) {
        const list = result.get(row.user_id) ?? [];
        list.push(toIdentity(row));
        result.set(row.user_id, list);
      }
      return result;
    },

    async removeDevice({ address, now, traceparent }) {
      return inTransaction(db, () => {
        const device = readActive(address);
        if (device === undefined) return undefined;
        const removal = decideRemoval(device, now, traceparent);
        q.deleteOneTimePrekeys.run(address.userId, address.deviceId);
        q.markRemoved.run(now.getTime(), removal.keyVersion, address.userId, address.deviceId);
        append(removal.events);
        return { removedAt: now };
      });
    },

    async uploadOneTimePrekeys({ address, prekeys, maxOneTimePrekeys, now }): Promise<UploadResult> {
      return inTransaction(db, (): UploadResult => {
        const device = readActive(address);
        if (device === undefined) return { kind: "device_not_found" };
        const decision = upload(device, prekeys, maxOneTimePrekeys, now);
        return decision.kind === "upload"
          ? { kind: "uploaded", count: decision.count, inserted: decision.insert.length }
          : decision;
      });
    },

    async claimPrekeyBundles(input: ClaimInput): Promise<ClaimResult> {
      return inTransaction(db, (): ClaimResult => {
        let devices: DeviceRecord[];
        if (input.deviceIds === undefined) {
          devices = (q.listActive.all(input.userId) as unknown as Row[]).map(toDevice);
        } else {
          devices = [];
          for (const deviceId of input.deviceIds) {
            const device = readActive({ userId: input.userId, deviceId });
            if (device === undefined) return { kind: "device_not_found", deviceId };
            devices.push(device);
          }
        }
        const bundles: PrekeyBundle[] = [];
        for (const device of devices) {
          if (device.deviceId === input.excludeDeviceId) continue;
          // One statement finds the device's lowest-id one-time prekey and deletes it.
          const taken = q.claimOneTimePrekey.get(
            device.userId,
            device.deviceId,
            device.userId,
            device.deviceId,
          ) as { key_id: number; public_key: Uint8Array } | undefined;
          const claimed =
            taken === undefined
              ? undefined
              : { keyId: taken.key_id, publicKey: new Uint8Array(taken.public_key) };
          const outcome = claimOutcome(device, claimed, input);
          q.updateCounters.run(
            outcome.oneTimePrekeyCount,
            outcome.lastResortPrekeyUsed ? 1 : 0,
            ms(outcome.prekeysLowNotifiedAt),
            device.userId,
            device.deviceId,
          );
          append(outcome.events);
          bundles.push(outcome.bundle);
        }
        return { kind: "claimed", bundles };
      });
    },

    async rotateIdentityKey(input: RotateIdentityKeyInput): Promise<RotateIdentityKeyResult> {
      return inTransaction(db, (): RotateIdentityKeyResult => {
        const device = readActive(input.address);
        if (device === undefined) return { kind: "device_not_found" };
        const decision = decideIdentityRotation(device, input);
        if (decision.kind === "identity_unchanged") return decision;
        if (decision.kind === "rotate") applyUpdate(decision.update);
        return decision.result;
      });
    },

    async rotateSignedPrekey(input: RotateSignedPrekeyInput): Promise<RotateSignedPrekeyResult> {
      return inTransaction(db, (): RotateSignedPrekeyResult => {
        const device = readActive(input.address);
        if (device === undefined) return { kind: "device_not_found" };
        const lastResortId = input.lastResortPrekey?.keyId;
        const oneTimeIds = new Set<number>(
          lastResortId === undefined ? [] : storedOneTimeKeys(device, [lastResortId]).keys(),
        );
        const decision = decideSignedPrekeyRotation(device, input, oneTimeIds);
        switch (decision.kind) {
          case "identity_changed":
          case "prekey_id_in_use":
            return decision;
          case "repeated":
            return decision.result;
          case "rotate":
            applyUpdate(decision.update);
            return decision.result;
        }
      });
    },

    close() {
      if (ownsDb) db.close();
    },
  };
}

/** A key_devices row as node:sqlite returns it. */
interface Row {
  user_id: string;
  device_id: string;
  key_version: number;
  removed_at: number | null;
  display_name: string;
  created_at: number;
  last_seen_at: number | null;
  identity_key: Uint8Array;
  identity_key_created_at: number;
  prev_identity_key: Uint8Array | null;
  prev_identity_key_valid_until: number | null;
  spk_id: number;
  spk_public_key: Uint8Array;
  spk_signature: Uint8Array;
  spk_created_at: number;
  prev_spk_id: number | null;
  prev_spk_public_key: Uint8Array | null;
  prev_spk_signature: Uint8Array | null;
  prev_spk_valid_until: number | null;
  lrk_id: number;
  lrk_public_key: Uint8Array;
  lrk_signature: Uint8Array;
  lrk_created_at: number;
  prev_lrk_id: number | null;
  prev_lrk_public_key: Uint8Array | null;
  prev_lrk_signature: Uint8Array | null;
  prev_lrk_valid_until: number | null;
  last_resort_used: number;
  prekeys_low_notified_at: number | null;
  one_time_prekey_count: number;
}

const bytes = (value: Uint8Array) => new Uint8Array(value);
const date = (value: number | null) => (value === null ? undefined : new Date(value));
const ms = (value: Date | undefined) => (value === undefined ? null : value.getTime());

function previousPrekey(
  id: number | null,
  publicKey: Uint8Array | null,
  signature: Uint8Array | null,
  validUntil: number | null,
): PreviousSignedPrekey | undefined {
  if (id === null || publicKey === null || signature === null || validUntil === null) return undefined;
  return {
    keyId: id,
    publicKey: bytes(publicKey),
    signature: bytes(signature),
    validUntil: new Date(validUntil),
  };
}

type IdentityRow = Pick<
  Row,
  | "user_id"
  | "device_id"
  | "identity_key"
  | "identity_key_created_at"
  | "prev_identity_key"
  | "prev_identity_key_valid_until"
>;

function toIdentity(row: IdentityRow): DeviceIdentity {
  return {
    userId: row.user_id,
    deviceId: row.device_id,
    identityKey: bytes(row.identity_key),
    identityKeyCreatedAt: new Date(row.identity_key_created_at),
    previousIdentityKey: previousIdentityKey(row),
  };
}

function previousIdentityKey(row: IdentityRow): DeviceIdentity["previousIdentityKey"] {
  return row.prev_identity_key === null || row.prev_identity_key_valid_until === null
    ? undefined
    : { publicKey: bytes(row.prev_identity_key), validUntil: new Date(row.prev_identity_key_valid_until) };
}

function toDevice(row: Row): DeviceRecord {
  return {
    userId: row.user_id,
    deviceId: row.device_id,
    displayName: row.display_name,
    createdAt: new Date(row.created_at),
    lastSeenAt: date(row.last_seen_at),
    keyVersion: row.key_version,
    identityKey: bytes(row.identity_key),
    identityKeyCreatedAt: new Date(row.identity_key_created_at),
    previousIdentityKey: previousIdentityKey(row),
    signedPrekey: {
      keyId: row.spk_id,
      publicKey: bytes(row.spk_public_key),
      signature: bytes(row.spk_signature),
      createdAt: new Date(row.spk_created_at),
    },
    previousSignedPrekey: previousPrekey(
      row.prev_spk_id,
      row.prev_spk_public_key,
      row.prev_spk_signature,
      row.prev_spk_valid_until,
    ),
    lastResortPrekey: {
      keyId: row.lrk_id,
      publicKey: bytes(row.lrk_public_key),
      signature: bytes(row.lrk_signature),
      createdAt: new Date(row.lrk_created_at),
    },
    previousLastResortPrekey: previousPrekey(
      row.prev_lrk_id,
      row.prev_lrk_public_key,
      row.prev_lrk_signature,
      row.prev_lrk_valid_until,
    ),
    lastResortPrekeyUsed: row.last_resort_used !== 0,
    prekeysLowNotifiedAt: date(row.prekeys_low_notified_at),
    oneTimePrekeyCount: row.one_time_prekey_count,
  };
}

const DEVICE_COLUMNS = [
  "user_id",
  "device_id",
  "key_version",
  "removed_at",
  "display_name",
  "created_at",
  "last_seen_at",
  "identity_key",
  "identity_key_created_at",
  "prev_identity_key",
  "prev_identity_key_valid_until",
  "spk_id",
  "spk_public_key",
  "spk_signature",
  "spk_created_at",
  "prev_spk_id",
  "prev_spk_public_key",
  "prev_spk_signature",
  "prev_spk_valid_until",
  "lrk_id",
  "lrk_public_key",
  "lrk_signature",
  "lrk_created_at",
  "prev_lrk_id",
  "prev_lrk_public_key",
  "prev_lrk_signature",
  "prev_lrk_valid_until",
  "last_resort_used",
  "prekeys_low_notified_at",
  "one_time_prekey_count",
] as const;

function deviceColumns(d: DeviceRecord): SQLInputValue[] {
  const ps = d.previousSignedPrekey;
  const pl = d.previousLastResortPrekey;
  return [
    d.userId,
    d.deviceId,
    d.keyVersion,
    null,
    d.displayName,
    d.createdAt.getTime(),
    ms(d.lastSeenAt),
    d.identityKey,
    d.identityKeyCreatedAt.getTime(),
    d.previousIdentityKey?.publicKey ?? null,
    ms(d.previousIdentityKey?.validUntil),
    d.signedPrekey.keyId,
    d.signedPrekey.publicKey,
    d.signedPrekey.signature,
    d.signedPrekey.createdAt.getTime(),
    ps?.keyId ?? null,
    ps?.publicKey ?? null,
    ps?.signature ?? null,
    ms(ps?.validUntil),
    d.lastResortPrekey.keyId,
    d.lastResortPrekey.publicKey,
    d.lastResortPrekey.signature,
    d.lastResortPrekey.createdAt.getTime(),
    pl?.keyId ?? null,
    pl?.publicKey ?? null,
    pl?.signature ?? null,
    ms(pl?.validUntil),
    d.lastResortPrekeyUsed ? 1 : 0,
    ms(d.prekeysLowNotifiedAt),
    d.oneTimePrekeyCount,
  ];
}

function statements(db: DatabaseSync) {
  const active = "SELECT * FROM key_devices WHERE user_id = ? AND removed_at IS NULL";
  return {
    activeIdentities: db.prepare(
      `SELECT user_id, device_id, identity_key, identity_key_created_at, prev_identity_key, prev_identity_key_valid_until
       FROM key_devices WHERE removed_at IS NULL AND user_id IN (SELECT value FROM json_each(?))
       ORDER BY user_id, created_at, device_id`,
    ),
    selectDevice: db.prepare("SELECT * FROM key_devices WHERE user_id = ? AND device_id = ?"),
    selectStatus: db.prepare(
      "SELECT removed_at, created_at, key_version FROM key_devices WHERE user_id = ? AND device_id = ?",
    ),
    countActive: db.prepare("SELECT COUNT(*) AS n FROM key_devices WHERE user_id = ? AND removed_at IS NULL"),
    listActive: db.prepare(`${active} ORDER BY created_at, device_id`),
    listFirst: db.prepare(`${active} ORDER BY created_at, device_id LIMIT ?`),
    listAfter: db.prepare(
      `${active} AND (created_at > ? OR (created_at = ? AND device_id > ?)) ORDER BY created_at, device_id LIMIT ?`,
    ),
    upsertDevice: db.prepare(
      `INSERT INTO key_devices (${DEVICE_COLUMNS.join(", ")}) VALUES (${DEVICE_COLUMNS.map(() => "?").join(", ")})
       ON CONFLICT (user_id, device_id) DO UPDATE SET ${DEVICE_COLUMNS.slice(2)
         .map((c) => `${c} = excluded.${c}`)
         .join(", ")}`,
    ),
    // A removed device keeps only what identifies it: its keys are deleted.
    markRemoved: db.prepare(
      `UPDATE key_devices SET removed_at = ?, key_version = ?, identity_key = NULL, identity_key_created_at = NULL,
         prev_identity_key = NULL, prev_identity_key_valid_until = NULL,
         spk_id = NULL, spk_public_key = NULL, spk_signature = NULL, spk_created_at = NULL,
         prev_spk_id = NULL, prev_spk_public_key = NULL, prev_spk_signature = NULL, prev_spk_valid_until = NULL,
         lrk_id = NULL, lrk_public_key = NULL, lrk_signature = NULL, lrk_created_at = NULL,
         prev_lrk_id = NULL, prev_lrk_public_key = NULL, prev_lrk_signature = NULL, prev_lrk_valid_until = NULL,
         last_resort_used = 0, prekeys_low_notified_at = NULL, one_time_prekey_count = 0
       WHERE user_id = ? AND device_id = ?`,
    ),
    updateCounters: db.prepare(
      `UPDATE key_devices SET one_time_prekey_count = ?, last_resort_used = ?, prekeys_low_notified_at = ?
       WHERE user_id = ? AND device_id = ?`,
    ),
    selectOneTimePrekey: db.prepare(
      "SELECT public_key FROM key_one_time_prekeys WHERE user_id = ? AND device_id = ? AND key_id = ?",
    ),
    insertOneTimePrekey: db.prepare(
      "INSERT INTO key_one_time_prekeys (user_id, device_id, key_id, public_key) VALUES (?, ?, ?, ?)",
    ),
    deleteOneTimePrekeys: db.prepare("DELETE FROM key_one_time_prekeys WHERE user_id = ? AND device_id = ?"),
    claimOneTimePrekey: db.prepare(
      `DELETE FROM key_one_time_prekeys
       WHERE user_id = ? AND device_id = ? AND key_id =
         (SELECT MIN(key_id) FROM key_one_time_prekeys WHERE user_id = ? AND device_id = ?)
       RETURNING key_id, public_key`,
    ),
  };
}
