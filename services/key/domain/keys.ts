import {
  aborted,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  resourceExhausted,
} from "../../../lib/errors.ts";
import type { RateLimiter } from "../../../lib/rate-limit.ts";
import type { KeyStore } from "./key-store.ts";
import type {
  DeviceAddress,
  DeviceIdentity,
  DeviceRecord,
  DeviceStatus,
  KeySettings,
  OneTimePrekey,
  PrekeyBundle,
  PreviousIdentityKey,
  SignedPrekey,
} from "./model.ts";
import { DEFAULT_KEY_SETTINGS, stillValid } from "./model.ts";
import type { RelationshipView } from "./relationship-view.ts";
import { xeddsaVerify } from "./xeddsa.ts";

/**
 * The two budgets a prekey claim spends from, one token per bundle (stops prekey draining). A
 * claim must pass both; a refusal by the per-caller budget has already spent the per-target one.
 */
export interface ClaimLimiters {
  /** Per caller and target user (key `caller>target`): stops draining one victim. */
  readonly perTarget: RateLimiter;
  /** Per caller (key: the caller's user id), over all targets. */
  readonly perCaller: RateLimiter;
}

export interface KeyDomainDeps {
  readonly store: KeyStore;
  readonly relationships: RelationshipView;
  readonly claimLimiters: ClaimLimiters;
  readonly settings?: Partial<KeySettings>;
  /** The clock; tests pass a fake one. */
  readonly now?: () => Date;
  /** Called after every change that may have written events (wakes the outbox relay). */
  readonly onChange?: () => void;
}

/** A device's public identity as others see it: the previous key only while its grace lasts. */
export interface DeviceIdentityView {
  readonly deviceId: string;
  readonly identityKey: Uint8Array;
  readonly identityKeyCreatedAt: Date;
  readonly previousIdentityKey: PreviousIdentityKey | undefined;
}

export interface DeviceView extends DeviceIdentityView {
  readonly displayName: string;
  readonly createdAt: Date;
  readonly lastSeenAt: Date | undefined;
}

export interface PrekeyCount {
  readonly oneTimePrekeyCount: number;
  readonly lowWatermark: number;
  readonly maxOneTimePrekeys: number;
  readonly lastResortPrekeyUsed: boolean;
  readonly signedPrekeyId: number;
  readonly signedPrekeyCreatedAt: Date;
}

export interface KeyDomain {
  readonly settings: KeySettings;
  registerDevice(input: {
    readonly address: DeviceAddress;
    readonly displayName: string;
    readonly identityKey: Uint8Array;
    readonly signedPrekey: SignedPrekey;
    readonly lastResortPrekey: SignedPrekey;
    readonly oneTimePrekeys: readonly OneTimePrekey[];
    readonly traceparent: string;
  }): Promise<{ readonly device: DeviceView; readonly oneTimePrekeyCount: number }>;
  listDevices(
    userId: string,
    pageSize: number,
    pageToken: string,
  ): Promise<{ readonly devices: readonly DeviceView[]; readonly nextPageToken: string }>;
  removeDevice(address: DeviceAddress, traceparent: string): Promise<{ readonly removedAt: Date }>;
  /** Cheap revocation check for the edge (key.v1 GetDeviceStatus): active, removed or unknown. */
  deviceStatus(address: DeviceAddress): Promise<DeviceStatus>;
  uploadOneTimePrekeys(address: DeviceAddress, prekeys: readonly OneTimePrekey[]): Promise<number>;
  getPrekeyCount(address: DeviceAddress): Promise<PrekeyCount>;
  getPrekeyBundles(input: {
    readonly caller: DeviceAddress;
    readonly targetUserId: string;
    readonly deviceIds: readonly string[];
    readonly traceparent: string;
  }): Promise<readonly PrekeyBundle[]>;
  getIdentityKeys(
    userId: string,
    targetUserIds: readonly string[],
  ): Promise<ReadonlyArray<{ readonly userId: string; readonly devices: readonly DeviceIdentityView[] }>>;
  rotateIdentityKey(input: {
    readonly address: DeviceAddress;
    readonly identityKey: Uint8Array;
    readonly signedPrekey: SignedPrekey;
    readonly lastResortPrekey: SignedPrekey;
    readonly oneTimePrekeys: readonly OneTimePrekey[];
    /** Undefined: the deployment's default. */
    readonly gracePeriodMs: number | undefined;
    readonly traceparent: string;
  }): Promise<{
    readonly effectiveAt: Date;
    readonly previousValidUntil: Date;
    readonly oneTimePrekeyCount: number;
  }>;
  rotateSignedPrekey(input: {
    readonly address: DeviceAddress;
    readonly signedPrekey: SignedPrekey;
    readonly lastResortPrekey: SignedPrekey | undefined;
    readonly gracePeriodMs: number | undefined;
    readonly traceparent: string;
  }): Promise<{
    readonly effectiveAt: Date;
    readonly previousSignedPrekeyId: number;
    readonly previousLastResortPrekeyId: number;
    readonly previousValidUntil: Date;
  }>;
}

/** Verifies an uploaded prekey's XEdDSA signature by `identityKey`, or throws INVALID_SIGNATURE. */
export function verifyPrekeySignature(identityKey: Uint8Array, prekey: SignedPrekey, field: string): void {
  if (!xeddsaVerify(identityKey, prekey.publicKey, prekey.signature)) {
    throw invalidArgument(
      "INVALID_SIGNATURE",
      `${field}.signature does not verify against the identity key`,
      {
        metadata: { field, keyId: String(prekey.keyId) },
        violations: [
          {
            field: `${field}.signature`,
            description: "XEdDSA signature of public_key by the identity key does not verify",
            reason: "INVALID_SIGNATURE",
          },
        ],
      },
    );
  }
}

function deviceNotFound(address: DeviceAddress): Error {
  return notFound(
    "DEVICE_NOT_FOUND",
    `device ${address.deviceId} of user ${address.userId} is not registered`,
    {
      metadata: { userId: address.userId, deviceId: address.deviceId },
    },
  );
}

function prekeyIdInUse(keyId: number): Error {
  return alreadyExists(
    "PREKEY_ID_IN_USE",
    `prekey id ${keyId} is already used by another key of this device`,
    {
      metadata: { keyId: String(keyId) },
    },
  );
}

function prekeyLimit(count: number, max: number): Error {
  return failedPrecondition(
    "PREKEY_LIMIT_REACHED",
    `the device holds ${count} one-time prekeys; an upload may not take it over ${max}`,
    { metadata: { oneTimePrekeyCount: String(count), maxOneTimePrekeys: String(max) } },
  );
}

/** The answer for a user the caller may not see, or who does not exist: the same on purpose. */
function userNotFound(userId: string): Error {
  return notFound("USER_NOT_FOUND", `user ${userId} not found`, { metadata: { userId } });
}

/** Page tokens of ListDevices: the position of the last device of the page, opaque to clients. */
export function encodePageToken(device: { readonly createdAt: Date; readonly deviceId: string }): string {
  return Buffer.from(JSON.stringify([device.createdAt.getTime(), device.deviceId])).toString("base64url");
}

export function decodePageToken(token: string): { readonly createdAt: Date; readonly deviceId: string } {
  const bad = () => invalidArgument("INVALID_PAGE_TOKEN", "page_token is not one this server issued");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length !== 2 ||
    !Number.isSafeInteger(parsed[0]) ||
    typeof parsed[1] !== "string"
  ) {
    throw bad();
  }
  return { createdAt: new Date(parsed[0] as number), deviceId: parsed[1] };
}

/** The key service's use cases: checks and signatures here, atomic state changes in the store. */
export function createKeyDomain(deps: KeyDomainDeps): KeyDomain {
  const settings: KeySettings = { ...DEFAULT_KEY_SETTINGS, ...deps.settings };
  const { store, relationships, claimLimiters } = deps;
  const clock = deps.now ?? (() => new Date());
  const changed = () => deps.onChange?.();

  const identityView = (device: DeviceIdentity, now: Date): DeviceIdentityView => ({
    deviceId: device.deviceId,
    identityKey: device.identityKey,
    identityKeyCreatedAt: device.identityKeyCreatedAt,
    previousIdentityKey: stillValid(device.previousIdentityKey, now),
  });
  const deviceView = (device: DeviceRecord, now: Date): DeviceView => ({
    ...identityView(device, now),
    displayName: device.displayName,
    createdAt: device.createdAt,
    lastSeenAt: device.lastSeenAt,
  });
  const graceEnd = (now: Date, gracePeriodMs: number | undefined): Date => {
    const grace = gracePeriodMs ?? settings.defaultGracePeriodMs;
    if (grace < 0 || grace > settings.maxGracePeriodMs) {
      throw invalidArgument(
        "INVALID_GRACE_PERIOD",
        `grace_period must be between 0 and ${settings.maxGracePeriodMs} ms`,
      );
    }
    return new Date(now.getTime() + grace);
  };

  return {
    settings,

    async registerDevice(input) {
      verifyPrekeySignature(input.identityKey, input.signedPrekey, "signed_prekey");
      verifyPrekeySignature(input.identityKey, input.lastResortPrekey, "last_resort_prekey");
      const now = clock();
      const result = await store.registerDevice({
        ...input,
        maxDevices: settings.maxDevices,
        maxOneTimePrekeys: settings.maxOneTimePrekeys,
        now,
      });
      changed();
      switch (result.kind) {
        case "registered":
          return {
            device: deviceView(result.device, now),
            oneTimePrekeyCount: result.device.oneTimePrekeyCount,
          };
        case "device_limit":
          throw failedPrecondition(
            "DEVICE_LIMIT_REACHED",
            `user ${input.address.userId} already has ${result.activeDevices} active devices (at most ${settings.maxDevices}): remove one first`,
            { metadata: { maxDevices: String(settings.maxDevices) } },
          );
        case "identity_conflict":
          throw alreadyExists(
            "DEVICE_ALREADY_REGISTERED",
            `device ${input.address.deviceId} is registered with another identity key: use RotateIdentityKey`,
            { metadata: { deviceId: input.address.deviceId } },
          );
        case "prekey_id_in_use":
          throw prekeyIdInUse(result.keyId);
        case "prekey_limit":
          throw prekeyLimit(result.count, settings.maxOneTimePrekeys);
      }
    },

    async listDevices(userId, pageSize, pageToken) {
      const limit = pageSize > 0 ? pageSize : settings.defaultPageSize;
      const after = pageToken === "" ? undefined : decodePageToken(pageToken);
      // One extra row tells whether another page follows.
      const rows = await store.listDevices(
        userId,
        after === undefined ? { limit: limit + 1 } : { after, limit: limit + 1 },
      );
      const page = rows.slice(0, limit);
      const last = page.at(-1);
      const now = clock();
      return {
        devices: page.map((d) => deviceView(d, now)),
        nextPageToken: rows.length > limit && last !== undefined ? encodePageToken(last) : "",
      };
    },

    async removeDevice(address, traceparent) {
      const removed = await store.removeDevice({ address, now: clock(), traceparent });
      changed();
      if (removed === undefined) throw deviceNotFound(address);
      return removed;
    },

    deviceStatus(address) {
      return store.deviceStatus(address);
    },

    async uploadOneTimePrekeys(address, prekeys) {
      const result = await store.uploadOneTimePrekeys({
        address,
        prekeys,
        maxOneTimePrekeys: settings.maxOneTimePrekeys,
        now: clock(),
      });
      changed();
      switch (result.kind) {
        case "uploaded":
          return result.count;
        case "device_not_found":
          throw deviceNotFound(address);
        case "prekey_id_in_use":
          throw prekeyIdInUse(result.keyId);
        case "prekey_limit":
          throw prekeyLimit(result.count, settings.maxOneTimePrekeys);
      }
    },

    async getPrekeyCount(address) {
      const device = await store.getDevice(address);
      if (device === undefined) throw deviceNotFound(address);
      return {
        oneTimePrekeyCount: device.oneTimePrekeyCount,
        lowWatermark: settings.lowWatermark,
        maxOneTimePrekeys: settings.maxOneTimePrekeys,
        lastResortPrekeyUsed: device.lastResortPrekeyUsed,
        signedPrekeyId: device.signedPrekey.keyId,
        signedPrekeyCreatedAt: device.signedPrekey.createdAt,
      };
    },

    async getPrekeyBundles({ caller, targetUserId, deviceIds, traceparent }) {
      const self = caller.userId === targetUserId;
      if (!self) {
        const visible = await relationships.visibleUsers(caller.userId, [targetUserId]);
        if (!visible.has(targetUserId)) throw userNotFound(targetUserId);
      }
      const now = clock();
      const cost = deviceIds.length > 0 ? deviceIds.length : settings.maxDevices;
      const perTarget = await claimLimiters.perTarget.take(`${caller.userId}>${targetUserId}`, cost);
      const limit = perTarget.allowed ? await claimLimiters.perCaller.take(caller.userId, cost) : perTarget;
      if (!limit.allowed) {
        throw resourceExhausted("PREKEY_CLAIM_RATE_LIMITED", "too many prekey bundles claimed; retry later", {
          retryDelayMs: limit.retryAfterMs,
        });
      }
      const excludeDeviceId = self ? caller.deviceId : undefined;
      const requested = deviceIds.length === 0 ? undefined : deviceIds.filter((id) => id !== excludeDeviceId);
      const result = await store.claimPrekeyBundles({
        userId: targetUserId,
        deviceIds: requested,
        excludeDeviceId,
        now,
        lowWatermark: settings.lowWatermark,
        prekeysLowIntervalMs: settings.prekeysLowIntervalMs,
        traceparent,
      });
      changed();
      if (result.kind === "device_not_found") {
        throw notFound(
          "DEVICE_NOT_FOUND",
          `device ${result.deviceId} of user ${targetUserId} is not active`,
          {
            metadata: { userId: targetUserId, deviceId: result.deviceId },
          },
        );
      }
      return result.bundles;
    },

    async getIdentityKeys(userId, targetUserIds) {
      const others = targetUserIds.filter((t) => t !== userId);
      const visible = new Set(others.length === 0 ? [] : await relationships.visibleUsers(userId, others));
      if (targetUserIds.includes(userId)) visible.add(userId);
      const devices = await store.activeDevices([...visible]);
      const now = clock();
      return targetUserIds.map((target) => ({
        userId: target,
        devices: visible.has(target) ? (devices.get(target) ?? []).map((d) => identityView(d, now)) : [],
      }));
    },

    async rotateIdentityKey(input) {
      verifyPrekeySignature(input.identityKey, input.signedPrekey, "signed_prekey");
      verifyPrekeySignature(input.identityKey, input.lastResortPrekey, "last_resort_prekey");
      const now = clock();
      const result = await store.rotateIdentityKey({
        address: input.address,
        identityKey: input.identityKey,
        signedPrekey: input.signedPrekey,
        lastResortPrekey: input.lastResortPrekey,
        oneTimePrekeys: input.oneTimePrekeys,
        now,
        validUntil: graceEnd(now, input.gracePeriodMs),
        traceparent: input.traceparent,
      });
      changed();
      switch (result.kind) {
        case "rotated":
          return result;
        case "device_not_found":
          throw deviceNotFound(input.address);
        case "identity_unchanged":
          throw invalidArgument(
            "IDENTITY_KEY_UNCHANGED",
            "identity_key must differ from the current identity key",
            {
              violations: [
                { field: "identity_key", description: "must differ from the current identity key" },
              ],
            },
          );
      }
    },

    async rotateSignedPrekey(input) {
      // The signatures are checked against the current identity key; should it be rotated between
      // that read and the write, the store refuses and the check runs again on the new key.
      for (let attempt = 0; attempt < 3; attempt++) {
        const device = await store.getDevice(input.address);
        if (device === undefined) throw deviceNotFound(input.address);
        verifyPrekeySignature(device.identityKey, input.signedPrekey, "signed_prekey");
        if (input.lastResortPrekey !== undefined) {
          verifyPrekeySignature(device.identityKey, input.lastResortPrekey, "last_resort_prekey");
        }
        const now = clock();
        const result = await store.rotateSignedPrekey({
          address: input.address,
          identityKey: device.identityKey,
          signedPrekey: input.signedPrekey,
          lastResortPrekey: input.lastResortPrekey,
          now,
          validUntil: graceEnd(now, input.gracePeriodMs),
          traceparent: input.traceparent,
        });
        changed();
        switch (result.kind) {
          case "rotated":
            return result;
          case "device_not_found":
            throw deviceNotFound(input.address);
          case "prekey_id_in_use":
            throw prekeyIdInUse(result.keyId);
          case "identity_changed":
            continue;
        }
      }
      throw aborted("CONCURRENT_KEY_CHANGE", "the identity key changed during the rotation; retry");
    },
  };
}
