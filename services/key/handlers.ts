import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type {
  DeviceIdentitySchema,
  DeviceSchema,
  PrekeyBundleSchema,
} from "../../gen/parley/key/v1/key_pb.ts";
import type { GetDeviceStatusResponseSchema, KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import { DeviceStatus as DeviceStatusCode } from "../../gen/parley/key/v1/key_service_pb.ts";
import { invalidArgument } from "../../lib/errors.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { currentTraceparent } from "../../lib/telemetry.ts";
import type { DeviceIdentityView, DeviceView, KeyDomain } from "./domain/keys.ts";
import type {
  DeviceAddress,
  DeviceStatus,
  OneTimePrekey,
  PrekeyBundle,
  SignedPrekey,
} from "./domain/model.ts";

/** Protovalidate has checked `required` before a handler runs; this only narrows the type. */
function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) {
    throw invalidArgument("VALIDATION_FAILED", `${field} is required`, {
      violations: [{ field, description: "value is required", reason: "REQUIRED" }],
    });
  }
  return value;
}

const address = (device: { userId: string; deviceId: string } | undefined): DeviceAddress => {
  const d = required(device, "device");
  return { userId: d.userId, deviceId: d.deviceId };
};

const signedPrekey = (key: {
  keyId: number;
  publicKey: Uint8Array;
  signature: Uint8Array;
}): SignedPrekey => ({
  keyId: key.keyId,
  publicKey: key.publicKey,
  signature: key.signature,
});

const oneTimePrekeys = (keys: ReadonlyArray<{ keyId: number; publicKey: Uint8Array }>): OneTimePrekey[] =>
  keys.map((k) => ({ keyId: k.keyId, publicKey: k.publicKey }));

const gracePeriodMs = (grace: Parameters<typeof durationMs>[0] | undefined) =>
  grace === undefined ? undefined : durationMs(grace);

function toDeviceIdentity(view: DeviceIdentityView): MessageInitShape<typeof DeviceIdentitySchema> {
  return {
    deviceId: view.deviceId,
    identityKey: view.identityKey,
    identityKeyCreatedAt: timestampFromDate(view.identityKeyCreatedAt),
    ...(view.previousIdentityKey === undefined
      ? {}
      : {
          previousIdentityKey: view.previousIdentityKey.publicKey,
          previousIdentityKeyValidUntil: timestampFromDate(view.previousIdentityKey.validUntil),
        }),
  };
}

function toDevice(view: DeviceView): MessageInitShape<typeof DeviceSchema> {
  return {
    deviceId: view.deviceId,
    displayName: view.displayName,
    createdAt: timestampFromDate(view.createdAt),
    ...(view.lastSeenAt === undefined ? {} : { lastSeenAt: timestampFromDate(view.lastSeenAt) }),
    identity: toDeviceIdentity(view),
  };
}

function toBundle(bundle: PrekeyBundle): MessageInitShape<typeof PrekeyBundleSchema> {
  return {
    deviceId: bundle.deviceId,
    identityKey: bundle.identityKey,
    signedPrekey: bundle.signedPrekey,
    prekey:
      bundle.prekey.kind === "one_time"
        ? { case: "oneTimePrekey", value: bundle.prekey.prekey }
        : { case: "lastResortPrekey", value: bundle.prekey.prekey },
  };
}

function toDeviceStatus(status: DeviceStatus): MessageInitShape<typeof GetDeviceStatusResponseSchema> {
  switch (status.state) {
    case "active":
      return {
        status: DeviceStatusCode.ACTIVE,
        registeredAt: timestampFromDate(status.registeredAt),
        keyVersion: BigInt(status.keyVersion),
      };
    case "removed":
      return {
        status: DeviceStatusCode.REMOVED,
        removedAt: timestampFromDate(status.removedAt),
        keyVersion: BigInt(status.keyVersion),
      };
    case "unknown":
      return { status: DeviceStatusCode.UNKNOWN };
  }
}

/** The key service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createKeyHandlers(keys: KeyDomain): GrpcServiceImplementation<typeof KeyService> {
  return {
    async registerDevice(request) {
      const result = await keys.registerDevice({
        address: address(request.device),
        displayName: request.displayName,
        identityKey: request.identityKey,
        signedPrekey: signedPrekey(required(request.signedPrekey, "signed_prekey")),
        lastResortPrekey: signedPrekey(required(request.lastResortPrekey, "last_resort_prekey")),
        oneTimePrekeys: oneTimePrekeys(request.oneTimePrekeys),
        traceparent: currentTraceparent(),
      });
      return { device: toDevice(result.device), oneTimePrekeyCount: result.oneTimePrekeyCount };
    },

    async listDevices(request) {
      const page = await keys.listDevices(request.userId, request.pageSize, request.pageToken);
      return { devices: page.devices.map(toDevice), nextPageToken: page.nextPageToken };
    },

    async removeDevice(request) {
      const removed = await keys.removeDevice(
        { userId: request.userId, deviceId: request.deviceId },
        currentTraceparent(),
      );
      return { removedAt: timestampFromDate(removed.removedAt) };
    },

    async getDeviceStatus(request) {
      return toDeviceStatus(await keys.deviceStatus(address(request.device)));
    },

    async uploadOneTimePrekeys(request) {
      const count = await keys.uploadOneTimePrekeys(
        address(request.device),
        oneTimePrekeys(request.oneTimePrekeys),
      );
      return { oneTimePrekeyCount: count };
    },

    async getPrekeyCount(request) {
      const count = await keys.getPrekeyCount(address(request.device));
      return {
        oneTimePrekeyCount: count.oneTimePrekeyCount,
        lowWatermark: count.lowWatermark,
        maxOneTimePrekeys: count.maxOneTimePrekeys,
        lastResortPrekeyUsed: count.lastResortPrekeyUsed,
        signedPrekeyId: count.signedPrekeyId,
        signedPrekeyCreatedAt: timestampFromDate(count.signedPrekeyCreatedAt),
      };
    },

    async getPrekeyBundles(request) {
      const bundles = await keys.getPrekeyBundles({
        caller: address(request.device),
        targetUserId: request.targetUserId,
        deviceIds: request.deviceIds,
        traceparent: currentTraceparent(),
      });
      return { bundles: bundles.map(toBundle) };
    },

    async getIdentityKeys(request) {
      const users = await keys.getIdentityKeys(request.userId, request.targetUserIds);
      return { users: users.map((u) => ({ userId: u.userId, devices: u.devices.map(toDeviceIdentity) })) };
    },

    async rotateIdentityKey(request) {
      const result = await keys.rotateIdentityKey({
        address: address(request.device),
        identityKey: request.identityKey,
        signedPrekey: signedPrekey(required(request.signedPrekey, "signed_prekey")),
        lastResortPrekey: signedPrekey(required(request.lastResortPrekey, "last_resort_prekey")),
        oneTimePrekeys: oneTimePrekeys(request.oneTimePrekeys),
        gracePeriodMs: gracePeriodMs(request.gracePeriod),
        traceparent: currentTraceparent(),
      });
      return {
        effectiveAt: timestampFromDate(result.effectiveAt),
        previousValidUntil: timestampFromDate(result.previousValidUntil),
        oneTimePrekeyCount: result.oneTimePrekeyCount,
      };
    },

    async rotateSignedPrekey(request) {
      const result = await keys.rotateSignedPrekey({
        address: address(request.device),
        signedPrekey: signedPrekey(required(request.signedPrekey, "signed_prekey")),
        lastResortPrekey:
          request.lastResortPrekey === undefined ? undefined : signedPrekey(request.lastResortPrekey),
        gracePeriodMs: gracePeriodMs(request.gracePeriod),
        traceparent: currentTraceparent(),
      });
      return {
        effectiveAt: timestampFromDate(result.effectiveAt),
        previousSignedPrekeyId: result.previousSignedPrekeyId,
        previousLastResortPrekeyId: result.previousLastResortPrekeyId,
        previousValidUntil: timestampFromDate(result.previousValidUntil),
      };
    },
  };
}
