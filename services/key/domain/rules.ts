import type { OutboxEvent } from "../../../lib/outbox.ts";
import { keyChangedEvent, prekeysLowEvent } from "./events.ts";
import type {
  ClaimInput,
  RegisterDeviceInput,
  RotateIdentityKeyInput,
  RotateIdentityKeyResult,
  RotateSignedPrekeyInput,
  RotateSignedPrekeyResult,
} from "./key-store.ts";
import type { DeviceAddress, DeviceRecord, OneTimePrekey, PrekeyBundle, SignedPrekey } from "./model.ts";
import { sameBytes, stillValid } from "./model.ts";

/**
 * The key service's rules as pure decisions over what a store read. A store adapter reads the
 * state inside its atomic step, asks the matching function here, and writes what it answers, so
 * every adapter enforces exactly the same rules.
 */

/** A device's next state and what else the change implies. */
export interface DeviceUpdate {
  readonly next: DeviceRecord;
  /** When set: delete every unclaimed one-time prekey of the device and store these instead. */
  readonly replaceOneTimePrekeys?: readonly OneTimePrekey[];
  readonly events: readonly OutboxEvent[];
}

function address(device: { readonly userId: string; readonly deviceId: string }): DeviceAddress {
  return { userId: device.userId, deviceId: device.deviceId };
}

function samePublicKey(a: SignedPrekey | OneTimePrekey, b: SignedPrekey | OneTimePrekey): boolean {
  return a.keyId === b.keyId && sameBytes(a.publicKey, b.publicKey);
}

export type RegistrationDecision =
  | { readonly kind: "create"; readonly update: DeviceUpdate }
  /** Already active with the same identity key: add the one-time prekeys like an upload. */
  | { readonly kind: "existing" }
  | { readonly kind: "device_limit" }
  | { readonly kind: "identity_conflict" };

/**
 * RegisterDevice. `existing` is the active device with this id, `activeDevices` how many active
 * devices the user has, `previousKeyVersion` the key version the id reached before (0 if never
 * registered), so a re-registration after removal keeps versions increasing.
 */
export function decideRegistration(args: {
  readonly existing: DeviceRecord | undefined;
  readonly activeDevices: number;
  readonly previousKeyVersion: number;
  readonly input: RegisterDeviceInput;
}): RegistrationDecision {
  const { existing, input } = args;
  if (existing !== undefined) {
    return sameBytes(existing.identityKey, input.identityKey)
      ? { kind: "existing" }
      : { kind: "identity_conflict" };
  }
  if (args.activeDevices >= input.maxDevices) return { kind: "device_limit" };
  const keyVersion = args.previousKeyVersion + 1;
  const now = input.now;
  const next: DeviceRecord = {
    userId: input.address.userId,
    deviceId: input.address.deviceId,
    displayName: input.displayName,
    createdAt: now,
    lastSeenAt: undefined,
    keyVersion,
    identityKey: input.identityKey,
    identityKeyCreatedAt: now,
    previousIdentityKey: undefined,
    signedPrekey: { ...input.signedPrekey, createdAt: now },
    previousSignedPrekey: undefined,
    lastResortPrekey: { ...input.lastResortPrekey, createdAt: now },
    previousLastResortPrekey: undefined,
    lastResortPrekeyUsed: false,
    prekeysLowNotifiedAt: undefined,
    oneTimePrekeyCount: input.oneTimePrekeys.length,
  };
  return {
    kind: "create",
    update: {
      next,
      replaceOneTimePrekeys: input.oneTimePrekeys,
      events: [
        keyChangedEvent({
          address: input.address,
          change: "device_added",
          identityKey: input.identityKey,
          keyVersion,
          effectiveAt: now,
          traceparent: input.traceparent,
        }),
      ],
    },
  };
}

export type UploadDecision =
  | {
      readonly kind: "upload";
      /** The keys to store; the others of the batch are already stored with the same key. */
      readonly insert: readonly OneTimePrekey[];
      /** The device's count after the upload. */
      readonly count: number;
      /** The device's flag after the upload: an upload that stores anything clears it. */
      readonly lastResortPrekeyUsed: boolean;
    }
  | { readonly kind: "prekey_id_in_use"; readonly keyId: number }
  | { readonly kind: "prekey_limit"; readonly count: number };

/**
 * UploadOneTimePrekeys (and the one-time prekeys of a repeated RegisterDevice). One-time and
 * last-resort prekeys share one id space per device: an id held by an unclaimed one-time prekey
 * with another public key, or by the last-resort prekey (the current one, or the previous one
 * while its grace period lasts, since the device still holds its private key), is in use. A key
 * already stored with the same id and public key is skipped, so retries are harmless. The device
 * may hold at most `max` unclaimed one-time prekeys: an upload that would exceed it stores nothing.
 * `stored` maps the batch's ids that are already stored to their public keys.
 */
export function decideUpload(args: {
  readonly device: DeviceRecord;
  readonly batch: readonly OneTimePrekey[];
  readonly stored: ReadonlyMap<number, Uint8Array>;
  readonly max: number;
  readonly now: Date;
}): UploadDecision {
  const { device, now } = args;
  const lastResortIds = new Set([device.lastResortPrekey.keyId]);
  const previous = stillValid(device.previousLastResortPrekey, now);
  if (previous !== undefined) lastResortIds.add(previous.keyId);
  const insert: OneTimePrekey[] = [];
  for (const key of args.batch) {
    if (lastResortIds.has(key.keyId)) return { kind: "prekey_id_in_use", keyId: key.keyId };
    const existing = args.stored.get(key.keyId);
    if (existing === undefined) insert.push(key);
    else if (!sameBytes(existing, key.publicKey)) return { kind: "prekey_id_in_use", keyId: key.keyId };
  }
  const count = device.oneTimePrekeyCount + insert.length;
  if (count > args.max) return { kind: "prekey_limit", count: device.oneTimePrekeyCount };
  return {
    kind: "upload",
    insert,
    count,
    lastResortPrekeyUsed: insert.length > 0 ? false : device.lastResortPrekeyUsed,
  };
}

/**
 * Whether a claim must be told to the device (PrekeysLow): it left fewer one-time prekeys than the
 * low watermark, or served the last-resort prekey; and no event went out in the last interval.
 */
export function shouldNotifyPrekeysLow(args: {
  readonly remaining: number;
  readonly servedLastResort: boolean;
  readonly lastNotifiedAt: Date | undefined;
  readonly now: Date;
  readonly lowWatermark: number;
  readonly intervalMs: number;
}): boolean {
  const low = args.remaining < args.lowWatermark || args.servedLastResort;
  if (!low) return false;
  return (
    args.lastNotifiedAt === undefined || args.now.getTime() - args.lastNotifiedAt.getTime() >= args.intervalMs
  );
}

export interface ClaimOutcome {
  readonly bundle: PrekeyBundle;
  readonly oneTimePrekeyCount: number;
  readonly lastResortPrekeyUsed: boolean;
  readonly prekeysLowNotifiedAt: Date | undefined;
  readonly events: readonly OutboxEvent[];
}

/**
 * One device's part of GetPrekeyBundles, once the store has atomically taken (and deleted)
 * `claimed`, its lowest-id one-time prekey, or found none.
 */
export function claimOutcome(
  device: DeviceRecord,
  claimed: OneTimePrekey | undefined,
  input: ClaimInput,
): ClaimOutcome {
  const servedLastResort = claimed === undefined;
  const remaining = servedLastResort ? 0 : Math.max(0, device.oneTimePrekeyCount - 1);
  const lastResortPrekeyUsed = device.lastResortPrekeyUsed || servedLastResort;
  const notify = shouldNotifyPrekeysLow({
    remaining,
    servedLastResort,
    lastNotifiedAt: device.prekeysLowNotifiedAt,
    now: input.now,
    lowWatermark: input.lowWatermark,
    intervalMs: input.prekeysLowIntervalMs,
  });
  const { signedPrekey, lastResortPrekey } = device;
  return {
    bundle: {
      deviceId: device.deviceId,
      identityKey: device.identityKey,
      signedPrekey: {
        keyId: signedPrekey.keyId,
        publicKey: signedPrekey.publicKey,
        signature: signedPrekey.signature,
      },
      prekey: servedLastResort
        ? {
            kind: "last_resort",
            prekey: {
              keyId: lastResortPrekey.keyId,
              publicKey: lastResortPrekey.publicKey,
              signature: lastResortPrekey.signature,
            },
          }
        : { kind: "one_time", prekey: claimed },
    },
    oneTimePrekeyCount: remaining,
    lastResortPrekeyUsed,
    prekeysLowNotifiedAt: notify ? input.now : device.prekeysLowNotifiedAt,
    events: notify
      ? [
          prekeysLowEvent({
            address: address(device),
            oneTimePrekeyCount: remaining,
            lowWatermark: input.lowWatermark,
            lastResortPrekeyUsed,
            detectedAt: input.now,
            traceparent: input.traceparent,
          }),
        ]
      : [],
  };
}

/** RemoveDevice: the KeyChanged event and the version the removed device ends at. */
export function decideRemoval(
  device: DeviceRecord,
  now: Date,
  traceparent: string,
): { readonly keyVersion: number; readonly events: readonly OutboxEvent[] } {
  const keyVersion = device.keyVersion + 1;
  return {
    keyVersion,
    events: [
      keyChangedEvent({
        address: address(device),
        change: "device_removed",
        identityKey: new Uint8Array(0),
        keyVersion,
        effectiveAt: now,
        traceparent,
      }),
    ],
  };
}

type Rotated<R> = Extract<R, { kind: "rotated" }>;

export type IdentityRotationDecision =
  | { readonly kind: "repeated"; readonly result: Rotated<RotateIdentityKeyResult> }
  | { readonly kind: "identity_unchanged" }
  | {
      readonly kind: "rotate";
      readonly update: DeviceUpdate;
      readonly result: Rotated<RotateIdentityKeyResult>;
    };

/**
 * RotateIdentityKey. The new identity key comes with a new signed prekey and last-resort prekey
 * (signed by it: the domain verified that) and replaces every unclaimed one-time prekey with the
 * batch sent along. The replaced keys stay valid until `validUntil`; only one previous key of each
 * kind is kept, so a rotation inside an earlier grace period ends that earlier key at once.
 * Asking again for the identity key already in effect after a rotation repeats that rotation's
 * answer and changes nothing; asking for it when it was never rotated is a no-op request.
 */
export function decideIdentityRotation(
  device: DeviceRecord,
  input: RotateIdentityKeyInput,
): IdentityRotationDecision {
  if (sameBytes(device.identityKey, input.identityKey)) {
    const previous = device.previousIdentityKey;
    if (previous === undefined) return { kind: "identity_unchanged" };
    return {
      kind: "repeated",
      result: {
        kind: "rotated",
        effectiveAt: device.identityKeyCreatedAt,
        previousValidUntil: previous.validUntil,
        oneTimePrekeyCount: device.oneTimePrekeyCount,
        repeated: true,
      },
    };
  }
  const { now, validUntil } = input;
  const keyVersion = device.keyVersion + 1;
  const next: DeviceRecord = {
    ...device,
    keyVersion,
    identityKey: input.identityKey,
    identityKeyCreatedAt: now,
    previousIdentityKey: { publicKey: device.identityKey, validUntil },
    signedPrekey: { ...input.signedPrekey, createdAt: now },
    previousSignedPrekey: { ...withoutCreatedAt(device.signedPrekey), validUntil },
    lastResortPrekey: { ...input.lastResortPrekey, createdAt: now },
    previousLastResortPrekey: { ...withoutCreatedAt(device.lastResortPrekey), validUntil },
    // A fresh last-resort prekey has not been served to anyone.
    lastResortPrekeyUsed: false,
    oneTimePrekeyCount: input.oneTimePrekeys.length,
  };
  return {
    kind: "rotate",
    update: {
      next,
      replaceOneTimePrekeys: input.oneTimePrekeys,
      events: [
        keyChangedEvent({
          address: input.address,
          change: "identity_rotated",
          identityKey: input.identityKey,
          keyVersion,
          effectiveAt: now,
          previousValidUntil: validUntil,
          traceparent: input.traceparent,
        }),
      ],
    },
    result: {
      kind: "rotated",
      effectiveAt: now,
      previousValidUntil: validUntil,
      oneTimePrekeyCount: input.oneTimePrekeys.length,
      repeated: false,
    },
  };
}

function withoutCreatedAt(key: SignedPrekey & { readonly createdAt: Date }): SignedPrekey {
  return { keyId: key.keyId, publicKey: key.publicKey, signature: key.signature };
}

export type SignedPrekeyRotationDecision =
  | { readonly kind: "repeated"; readonly result: Rotated<RotateSignedPrekeyResult> }
  | { readonly kind: "identity_changed" }
  | { readonly kind: "prekey_id_in_use"; readonly keyId: number }
  | {
      readonly kind: "rotate";
      readonly update: DeviceUpdate;
      readonly result: Rotated<RotateSignedPrekeyResult>;
    };

/**
 * RotateSignedPrekey. A key id that is the current or (still valid) previous one of its kind with
 * another public key is in use; so is a last-resort id held by an unclaimed one-time prekey
 * (`oneTimePrekeyIds` holds the ids among the request's that are). Keys equal (id and public key)
 * to the current ones are not rotations: when nothing is new the request repeats an earlier
 * rotation and gets that rotation's answer back. A new signed prekey writes KeyChanged
 * SIGNED_PREKEY_ROTATED; a new last-resort prekey alone changes nothing others must know.
 */
export function decideSignedPrekeyRotation(
  device: DeviceRecord,
  input: RotateSignedPrekeyInput,
  oneTimePrekeyIds: ReadonlySet<number>,
): SignedPrekeyRotationDecision {
  if (!sameBytes(device.identityKey, input.identityKey)) return { kind: "identity_changed" };
  const { now, validUntil } = input;
  const conflict = (candidate: SignedPrekey, current: SignedPrekey, previous: SignedPrekey | undefined) =>
    (candidate.keyId === current.keyId && !sameBytes(candidate.publicKey, current.publicKey)) ||
    (previous !== undefined &&
      candidate.keyId === previous.keyId &&
      !sameBytes(candidate.publicKey, previous.publicKey));

  const signed = input.signedPrekey;
  if (conflict(signed, device.signedPrekey, stillValid(device.previousSignedPrekey, now))) {
    return { kind: "prekey_id_in_use", keyId: signed.keyId };
  }
  const lastResort = input.lastResortPrekey;
  if (lastResort !== undefined) {
    if (
      oneTimePrekeyIds.has(lastResort.keyId) ||
      conflict(lastResort, device.lastResortPrekey, stillValid(device.previousLastResortPrekey, now))
    ) {
      return { kind: "prekey_id_in_use", keyId: lastResort.keyId };
    }
  }

  const newSigned = !samePublicKey(signed, device.signedPrekey);
  const newLastResort = lastResort !== undefined && !samePublicKey(lastResort, device.lastResortPrekey);

  if (!newSigned && !newLastResort) {
    // The answer of the rotation that put these keys in place.
    const signedAt = device.signedPrekey.createdAt;
    const lastResortAt = device.lastResortPrekey.createdAt;
    const effectiveAt = lastResort !== undefined && lastResortAt > signedAt ? lastResortAt : signedAt;
    const previousSigned =
      device.signedPrekey.createdAt.getTime() === effectiveAt.getTime()
        ? device.previousSignedPrekey
        : undefined;
    const previousLastResort =
      lastResort !== undefined && lastResortAt.getTime() === effectiveAt.getTime()
        ? device.previousLastResortPrekey
        : undefined;
    return {
      kind: "repeated",
      result: {
        kind: "rotated",
        effectiveAt,
        previousSignedPrekeyId: previousSigned?.keyId ?? 0,
        previousLastResortPrekeyId: previousLastResort?.keyId ?? 0,
        previousValidUntil: (previousSigned ?? previousLastResort)?.validUntil ?? effectiveAt,
        repeated: true,
      },
    };
  }

  const keyVersion = newSigned ? device.keyVersion + 1 : device.keyVersion;
  const next: DeviceRecord = {
    ...device,
    keyVersion,
    ...(newSigned
      ? {
          signedPrekey: { ...signed, createdAt: now },
          previousSignedPrekey: { ...withoutCreatedAt(device.signedPrekey), validUntil },
        }
      : {}),
    ...(newLastResort
      ? {
          lastResortPrekey: { ...lastResort, createdAt: now },
          previousLastResortPrekey: { ...withoutCreatedAt(device.lastResortPrekey), validUntil },
        }
      : {}),
  };
  return {
    kind: "rotate",
    update: {
      next,
      events: newSigned
        ? [
            keyChangedEvent({
              address: input.address,
              change: "signed_prekey_rotated",
              identityKey: device.identityKey,
              keyVersion,
              effectiveAt: now,
              previousValidUntil: validUntil,
              traceparent: input.traceparent,
            }),
          ]
        : [],
    },
    result: {
      kind: "rotated",
      effectiveAt: now,
      previousSignedPrekeyId: newSigned ? device.signedPrekey.keyId : 0,
      previousLastResortPrekeyId: newLastResort ? device.lastResortPrekey.keyId : 0,
      previousValidUntil: validUntil,
      repeated: false,
    },
  };
}
