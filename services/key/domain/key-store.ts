import type { Outbox } from "../../../lib/outbox.ts";
import type {
  DeviceAddress,
  DeviceIdentity,
  DeviceRecord,
  DeviceStatus,
  OneTimePrekey,
  PrekeyBundle,
  SignedPrekey,
} from "./model.ts";

/**
 * The key service's storage port. Each mutating method is one atomic step: its checks, its writes
 * and the events it implies (KeyChanged on `chat.keys`, PrekeysLow on `chat.prekeys`, built with
 * domain/events.ts) commit together or not at all, and the events go to `outbox`, which the
 * process relays to the broker. The decisions themselves are the pure functions of
 * domain/rules.ts, so every adapter applies the same rules; the adapter provides atomicity (an
 * SQLite transaction, Cassandra lightweight transactions). domain/key-store.contract.ts pins the
 * behaviour every adapter must have.
 *
 * `now` always comes from the caller (the domain's clock), so adapters never read the time.
 */
export interface KeyStore {
  /** Events written by the methods below, waiting for the relay. */
  readonly outbox: Outbox;

  /**
   * Registers a device, or returns it when it is already active with the same identity key (then
   * one-time prekeys not stored yet are added like an upload, and nothing else changes). A new
   * registration writes KeyChanged DEVICE_ADDED.
   */
  registerDevice(input: RegisterDeviceInput): Promise<RegisterDeviceResult>;

  /** The active device with this address, if any. */
  getDevice(address: DeviceAddress): Promise<DeviceRecord | undefined>;

  /**
   * Cheap revocation check for the edge (one key lookup): active, removed (since when) or unknown.
   * A device id removed and registered again is active with a later `registeredAt`.
   */
  deviceStatus(address: DeviceAddress): Promise<DeviceStatus>;

  /** One page of a user's active devices, oldest first (by createdAt, then deviceId). */
  listDevices(userId: string, page: DevicePage): Promise<readonly DeviceRecord[]>;

  /**
   * The active devices of each user (oldest first), their identities only; users without any are
   * absent.
   */
  activeDevices(userIds: readonly string[]): Promise<ReadonlyMap<string, readonly DeviceIdentity[]>>;

  /**
   * Revokes an active device: deletes its keys and one-time prekeys, remembers when it was removed
   * and writes KeyChanged DEVICE_REMOVED. Undefined when no such device is active.
   */
  removeDevice(input: {
    readonly address: DeviceAddress;
    readonly now: Date;
    readonly traceparent: string;
  }): Promise<{ readonly removedAt: Date } | undefined>;

  /** Adds one-time prekeys to an active device (see rules.decideUpload). */
  uploadOneTimePrekeys(input: {
    readonly address: DeviceAddress;
    readonly prekeys: readonly OneTimePrekey[];
    readonly maxOneTimePrekeys: number;
    readonly now: Date;
  }): Promise<UploadResult>;

  /**
   * Claims one bundle for each active device of `userId` (or each of `deviceIds`, in that order),
   * leaving out `excludeDeviceId`. Each bundle takes one one-time prekey, deleting it in the same
   * atomic step as it is read, so no two claims ever get the same one, however many run at once;
   * a device with none left gets its last-resort prekey (and is marked as having used it). Writes
   * PrekeysLow for each device that rules.shouldNotifyPrekeysLow says must be told.
   */
  claimPrekeyBundles(input: ClaimInput): Promise<ClaimResult>;

  /** Replaces the identity key of an active device (see rules.decideIdentityRotation). */
  rotateIdentityKey(input: RotateIdentityKeyInput): Promise<RotateIdentityKeyResult>;

  /** Replaces the signed (and maybe last-resort) prekey (see rules.decideSignedPrekeyRotation). */
  rotateSignedPrekey(input: RotateSignedPrekeyInput): Promise<RotateSignedPrekeyResult>;

  /** Releases the store's resources (the embedded adapter closes its database if it opened it). */
  close(): void;
}

export interface DevicePage {
  /** Devices strictly after this position (the last device of the previous page). */
  readonly after?: { readonly createdAt: Date; readonly deviceId: string };
  readonly limit: number;
}

export interface RegisterDeviceInput {
  readonly address: DeviceAddress;
  readonly displayName: string;
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly lastResortPrekey: SignedPrekey;
  readonly oneTimePrekeys: readonly OneTimePrekey[];
  readonly maxDevices: number;
  readonly maxOneTimePrekeys: number;
  readonly now: Date;
  readonly traceparent: string;
}

export type RegisterDeviceResult =
  | { readonly kind: "registered"; readonly device: DeviceRecord; readonly created: boolean }
  | { readonly kind: "device_limit"; readonly activeDevices: number }
  | { readonly kind: "identity_conflict" }
  | { readonly kind: "prekey_id_in_use"; readonly keyId: number }
  | { readonly kind: "prekey_limit"; readonly count: number };

export type UploadResult =
  | { readonly kind: "uploaded"; readonly count: number; readonly inserted: number }
  | { readonly kind: "device_not_found" }
  | { readonly kind: "prekey_id_in_use"; readonly keyId: number }
  | { readonly kind: "prekey_limit"; readonly count: number };

export interface ClaimInput {
  readonly userId: string;
  /** Only these devices, in this order; undefined means every active device, oldest first. */
  readonly deviceIds: readonly string[] | undefined;
  /** The calling device when it claims from its own user. */
  readonly excludeDeviceId: string | undefined;
  readonly now: Date;
  readonly lowWatermark: number;
  readonly prekeysLowIntervalMs: number;
  readonly traceparent: string;
}

export type ClaimResult =
  | { readonly kind: "claimed"; readonly bundles: readonly PrekeyBundle[] }
  /** A requested device is not active: nothing was claimed. */
  | { readonly kind: "device_not_found"; readonly deviceId: string };

export interface RotateIdentityKeyInput {
  readonly address: DeviceAddress;
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly lastResortPrekey: SignedPrekey;
  readonly oneTimePrekeys: readonly OneTimePrekey[];
  readonly now: Date;
  /** End of the old keys' grace period (now + grace). */
  readonly validUntil: Date;
  readonly traceparent: string;
}

export type RotateIdentityKeyResult =
  | {
      readonly kind: "rotated";
      readonly effectiveAt: Date;
      readonly previousValidUntil: Date;
      readonly oneTimePrekeyCount: number;
      /** True when this repeated an earlier rotation and changed nothing. */
      readonly repeated: boolean;
    }
  | { readonly kind: "device_not_found" }
  | { readonly kind: "identity_unchanged" };

export interface RotateSignedPrekeyInput {
  readonly address: DeviceAddress;
  /** The identity key the signatures were verified against: the rotation fails if it changed. */
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly lastResortPrekey: SignedPrekey | undefined;
  readonly now: Date;
  readonly validUntil: Date;
  readonly traceparent: string;
}

export type RotateSignedPrekeyResult =
  | {
      readonly kind: "rotated";
      readonly effectiveAt: Date;
      /** 0 when the signed prekey was not replaced. */
      readonly previousSignedPrekeyId: number;
      /** 0 when the last-resort prekey was kept. */
      readonly previousLastResortPrekeyId: number;
      readonly previousValidUntil: Date;
      readonly repeated: boolean;
    }
  | { readonly kind: "device_not_found" }
  | { readonly kind: "identity_changed" }
  | { readonly kind: "prekey_id_in_use"; readonly keyId: number };
