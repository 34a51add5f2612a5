/**
 * A device row of the key_devices table (migrations.ts) to and from the domain's DeviceRecord.
 */
import type cassandra from "cassandra-driver";
import type { DeviceRecord, PreviousSignedPrekey } from "../../domain/model.ts";

export const DEVICE_COLUMNS = [
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
  "current_prekey_set",
  "prekey_floor",
] as const;

/** One device row: an active device (`record`) or the trace a removed one leaves. */
export interface StoredDevice {
  readonly deviceId: string;
  readonly keyVersion: number;
  readonly removedAt: Date | undefined;
  readonly createdAt: Date;
  /** The device's current batch of one-time prekeys (rows with this prekey_set). */
  readonly prekeySet: number;
  /** Every unclaimed one-time prekey of the set has a larger id. */
  readonly prekeyFloor: number;
  readonly record: DeviceRecord | undefined;
}

/** The DEVICE_COLUMNS values of an active device. */
export function deviceColumnValues(
  device: DeviceRecord,
  prekeySet: number,
  prekeyFloor: number,
): Record<(typeof DEVICE_COLUMNS)[number], unknown> {
  const ps = device.previousSignedPrekey;
  const pl = device.previousLastResortPrekey;
  return {
    key_version: device.keyVersion,
    removed_at: null,
    display_name: device.displayName,
    created_at: device.createdAt,
    last_seen_at: device.lastSeenAt ?? null,
    identity_key: blob(device.identityKey),
    identity_key_created_at: device.identityKeyCreatedAt,
    prev_identity_key: blob(device.previousIdentityKey?.publicKey),
    prev_identity_key_valid_until: device.previousIdentityKey?.validUntil ?? null,
    spk_id: device.signedPrekey.keyId,
    spk_public_key: blob(device.signedPrekey.publicKey),
    spk_signature: blob(device.signedPrekey.signature),
    spk_created_at: device.signedPrekey.createdAt,
    prev_spk_id: ps?.keyId ?? null,
    prev_spk_public_key: blob(ps?.publicKey),
    prev_spk_signature: blob(ps?.signature),
    prev_spk_valid_until: ps?.validUntil ?? null,
    lrk_id: device.lastResortPrekey.keyId,
    lrk_public_key: blob(device.lastResortPrekey.publicKey),
    lrk_signature: blob(device.lastResortPrekey.signature),
    lrk_created_at: device.lastResortPrekey.createdAt,
    prev_lrk_id: pl?.keyId ?? null,
    prev_lrk_public_key: blob(pl?.publicKey),
    prev_lrk_signature: blob(pl?.signature),
    prev_lrk_valid_until: pl?.validUntil ?? null,
    last_resort_used: device.lastResortPrekeyUsed,
    prekeys_low_notified_at: device.prekeysLowNotifiedAt ?? null,
    one_time_prekey_count: device.oneTimePrekeyCount,
    current_prekey_set: prekeySet,
    prekey_floor: prekeyFloor,
  };
}

export function toNumber(value: unknown): number | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value === "number") return value;
  return (value as cassandra.types.Long).toNumber();
}

export function bytes(value: unknown): Uint8Array {
  return new Uint8Array(value as Buffer);
}

function blob(value: Uint8Array | undefined): Buffer | null {
  return value === undefined ? null : Buffer.from(value);
}

function date(value: unknown): Date | undefined {
  return value === null || value === undefined ? undefined : (value as Date);
}

function previousPrekey(
  row: cassandra.types.Row,
  prefix: "prev_spk" | "prev_lrk",
): PreviousSignedPrekey | undefined {
  const keyId = toNumber(row.get(`${prefix}_id`));
  const publicKey = row.get(`${prefix}_public_key`) as Buffer | null;
  const signature = row.get(`${prefix}_signature`) as Buffer | null;
  const validUntil = date(row.get(`${prefix}_valid_until`));
  if (keyId === undefined || publicKey === null || signature === null || validUntil === undefined) {
    return undefined;
  }
  return { keyId, publicKey: bytes(publicKey), signature: bytes(signature), validUntil };
}

export function toStoredDevice(userId: string, row: cassandra.types.Row): StoredDevice {
  const removedAt = date(row.get("removed_at"));
  const createdAt = row.get("created_at") as Date;
  const stored = {
    deviceId: String(row.get("device_id")),
    keyVersion: Number(row.get("key_version")),
    removedAt,
    createdAt,
    prekeySet: Number(row.get("current_prekey_set") ?? 0),
    prekeyFloor: toNumber(row.get("prekey_floor")) ?? 0,
  };
  if (removedAt !== undefined) return { ...stored, record: undefined };
  const previousIdentity = row.get("prev_identity_key") as Buffer | null;
  const previousIdentityValidUntil = date(row.get("prev_identity_key_valid_until"));
  return {
    ...stored,
    record: {
      userId,
      deviceId: stored.deviceId,
      displayName: String(row.get("display_name")),
      createdAt,
      lastSeenAt: date(row.get("last_seen_at")),
      keyVersion: stored.keyVersion,
      identityKey: bytes(row.get("identity_key")),
      identityKeyCreatedAt: row.get("identity_key_created_at") as Date,
      previousIdentityKey:
        previousIdentity === null || previousIdentityValidUntil === undefined
          ? undefined
          : { publicKey: bytes(previousIdentity), validUntil: previousIdentityValidUntil },
      signedPrekey: {
        keyId: toNumber(row.get("spk_id")) as number,
        publicKey: bytes(row.get("spk_public_key")),
        signature: bytes(row.get("spk_signature")),
        createdAt: row.get("spk_created_at") as Date,
      },
      previousSignedPrekey: previousPrekey(row, "prev_spk"),
      lastResortPrekey: {
        keyId: toNumber(row.get("lrk_id")) as number,
        publicKey: bytes(row.get("lrk_public_key")),
        signature: bytes(row.get("lrk_signature")),
        createdAt: row.get("lrk_created_at") as Date,
      },
      previousLastResortPrekey: previousPrekey(row, "prev_lrk"),
      lastResortPrekeyUsed: row.get("last_resort_used") === true,
      prekeysLowNotifiedAt: date(row.get("prekeys_low_notified_at")),
      oneTimePrekeyCount: Number(row.get("one_time_prekey_count") ?? 0),
    },
  };
}
