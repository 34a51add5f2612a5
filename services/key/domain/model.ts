/**
 * The key service's domain types. Keys are Signal's serialized Curve25519 public keys (33 bytes,
 * 0x05 || u) and XEdDSA signatures (64 bytes); times are Dates; key ids are 1..2^32-1.
 */

export interface DeviceAddress {
  readonly userId: string;
  readonly deviceId: string;
}

export interface OneTimePrekey {
  readonly keyId: number;
  readonly publicKey: Uint8Array;
}

/** A signed prekey or last-resort prekey, as uploaded. */
export interface SignedPrekey {
  readonly keyId: number;
  readonly publicKey: Uint8Array;
  readonly signature: Uint8Array;
}

export interface CurrentSignedPrekey extends SignedPrekey {
  readonly createdAt: Date;
}

/** A replaced key, kept until the end of its rotation grace period. */
export interface PreviousSignedPrekey extends SignedPrekey {
  readonly validUntil: Date;
}

export interface PreviousIdentityKey {
  readonly publicKey: Uint8Array;
  readonly validUntil: Date;
}

/**
 * An active device's identity: what GetIdentityKeys shows, and all a lookup of many users' devices
 * reads (a 1,000-member group's sender asks for 5,000 of them; the prekeys stay unread).
 */
export interface DeviceIdentity {
  readonly userId: string;
  readonly deviceId: string;
  readonly identityKey: Uint8Array;
  readonly identityKeyCreatedAt: Date;
  readonly previousIdentityKey: PreviousIdentityKey | undefined;
}

/**
 * One active device and its keys, as a store holds them. `previous*` keys are kept as stored,
 * also after their `validUntil`: whether one still counts is decided against the clock when read
 * (see `stillValid`).
 */
export interface DeviceRecord extends DeviceIdentity {
  readonly displayName: string;
  /** When this registration of the device id happened (a re-registration after removal is new). */
  readonly createdAt: Date;
  readonly lastSeenAt: Date | undefined;
  /** Increases with every change of the device's keys, across removal and re-registration. */
  readonly keyVersion: number;
  readonly signedPrekey: CurrentSignedPrekey;
  readonly previousSignedPrekey: PreviousSignedPrekey | undefined;
  readonly lastResortPrekey: CurrentSignedPrekey;
  readonly previousLastResortPrekey: PreviousSignedPrekey | undefined;
  /** The last-resort prekey was served since the last one-time prekey upload. */
  readonly lastResortPrekeyUsed: boolean;
  /** When the last PrekeysLow event for this device was written (for the hourly limit). */
  readonly prekeysLowNotifiedAt: Date | undefined;
  readonly oneTimePrekeyCount: number;
}

/** Whether a device id may be used: the edge refuses streams and tokens of anything but `active`. */
export type DeviceStatus =
  | { readonly state: "active"; readonly registeredAt: Date; readonly keyVersion: number }
  | { readonly state: "removed"; readonly removedAt: Date; readonly keyVersion: number }
  | { readonly state: "unknown" };

/** The prekey handed out in a bundle. */
export type ClaimedPrekey =
  | { readonly kind: "one_time"; readonly prekey: OneTimePrekey }
  | { readonly kind: "last_resort"; readonly prekey: SignedPrekey };

export interface PrekeyBundle {
  readonly deviceId: string;
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly prekey: ClaimedPrekey;
}

/** The limits and periods of a deployment. */
export interface KeySettings {
  /** Active devices per user. */
  readonly maxDevices: number;
  /** Unclaimed one-time prekeys per device. */
  readonly maxOneTimePrekeys: number;
  /** A device is told to upload when its count is below this. */
  readonly lowWatermark: number;
  /** Rotation grace period when the request leaves it unset. */
  readonly defaultGracePeriodMs: number;
  /** The longest grace period a request may ask for. */
  readonly maxGracePeriodMs: number;
  /** At most one PrekeysLow event per device in this period. */
  readonly prekeysLowIntervalMs: number;
  /** Default page size of ListDevices. */
  readonly defaultPageSize: number;
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

export const DEFAULT_KEY_SETTINGS: KeySettings = {
  maxDevices: 5,
  maxOneTimePrekeys: 1_000,
  lowWatermark: 10,
  defaultGracePeriodMs: 7 * DAY,
  maxGracePeriodMs: 30 * DAY,
  prekeysLowIntervalMs: HOUR,
  defaultPageSize: 100,
};

/** Whether a previous key still counts at `now`: its grace period ends strictly after now. */
export function stillValid<T extends { readonly validUntil: Date }>(
  key: T | undefined,
  now: Date,
): T | undefined {
  return key !== undefined && key.validUntil.getTime() > now.getTime() ? key : undefined;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameSignedPrekey(a: SignedPrekey, b: SignedPrekey): boolean {
  return a.keyId === b.keyId && sameBytes(a.publicKey, b.publicKey) && sameBytes(a.signature, b.signature);
}
