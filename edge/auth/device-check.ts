import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import { DeviceStatus, KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import type { GrpcServiceClient } from "../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import type { DeviceStanding, IsDeviceActive } from "./verifier.ts";

/**
 * The revocation hook backed by the key service (key.v1 `GetDeviceStatus`, internal only): where
 * the token's device stands. A call that fails (key unreachable, deadline) rejects, which the
 * verifier turns into UNAVAILABLE `AUTH_CHECK_UNAVAILABLE`: the edge fails closed.
 */
export function keyServiceDeviceCheck(
  key: Pick<GrpcServiceClient<typeof KeyService>, "getDeviceStatus">,
  options: { readonly deadlineMs?: number } = {},
): IsDeviceActive {
  const deadlineMs = options.deadlineMs ?? 2_000;
  return async (device) => {
    const response = await key.getDeviceStatus(
      { device: { userId: device.userId, deviceId: device.deviceId } },
      { deadline: deadlineMs },
    );
    switch (response.status) {
      case DeviceStatus.ACTIVE:
        return { state: "active" };
      case DeviceStatus.REMOVED:
        if (response.removedAt === undefined) throw new Error("GetDeviceStatus: REMOVED without removed_at");
        return { state: "removed", removedAt: timestampDate(response.removedAt) };
      case DeviceStatus.UNKNOWN:
        return { state: "unknown" };
      default:
        throw new Error(`GetDeviceStatus answered status ${response.status}`);
    }
  };
}

/**
 * `keyServiceDeviceCheck` over its own channel to the key service at `keyAddress`, for
 * `startEdge(config, logger, { isDeviceActive })`; close it after the edge stopped.
 */
export function createKeyServiceDeviceCheck(keyAddress: string): {
  readonly isDeviceActive: IsDeviceActive;
  close(): void;
} {
  const client = createGrpcClient(KeyService, keyAddress);
  return { isDeviceActive: keyServiceDeviceCheck(client), close: () => closeChannel(client) };
}

export interface CachedDeviceCheck {
  /** The hook with the cache in front. */
  readonly check: IsDeviceActive;
  /** Drops what is cached (or being looked up) for the device: it was just removed. */
  forget(device: DeviceAddress): void;
  /** Devices cached now (tests, metrics). */
  readonly size: number;
}

export interface DeviceCheckCacheOptions {
  /** How long an ACTIVE answer is reused. Default 10 s: a removal elsewhere is seen within it. */
  readonly activeTtlMs?: number;
  /** Most devices cached; the oldest entry goes first. Default 100,000. */
  readonly maxEntries?: number;
  /** The clock, in ms (tests). */
  readonly now?: () => number;
}

const key = (device: DeviceAddress) => `${device.userId}/${device.deviceId}`;

/**
 * Caches ACTIVE answers of `check` for a short while, so the check costs one lookup per device
 * every `activeTtlMs` rather than one per call; concurrent lookups of one device share a call.
 * Other answers (removed, unknown, failures) are never cached: a device that just registered may
 * open its stream at once, and a revoked token stays revoked. `forget` drops a device at once (the
 * edge calls it when it learns of a removal: its own RemoveDevice passthrough, or a pushed
 * KeyChanged DEVICE_REMOVED); a lookup that was running meanwhile is not cached.
 */
export function cacheDeviceCheck(
  check: IsDeviceActive,
  options: DeviceCheckCacheOptions = {},
): CachedDeviceCheck {
  const ttlMs = options.activeTtlMs ?? 10_000;
  const maxEntries = options.maxEntries ?? 100_000;
  const now = options.now ?? Date.now;
  const active = new Map<string, number>();
  const running = new Map<string, Promise<boolean | DeviceStanding>>();

  const isActive = (answer: boolean | DeviceStanding) =>
    answer === true || (typeof answer === "object" && answer.state === "active");

  return {
    get size() {
      return active.size;
    },
    forget(device) {
      active.delete(key(device));
      running.delete(key(device));
    },
    async check(device) {
      const k = key(device);
      const until = active.get(k);
      if (until !== undefined) {
        if (until > now()) return true;
        active.delete(k);
      }
      const pending = running.get(k);
      if (pending !== undefined) return pending;
      const lookup = check(device);
      running.set(k, lookup);
      try {
        const answer = await lookup;
        // Forgotten while running (a removal): the answer may predate it, so it is not kept.
        if (running.get(k) === lookup && isActive(answer) && ttlMs > 0) {
          active.set(k, now() + ttlMs);
          if (active.size > maxEntries) {
            const oldest = active.keys().next();
            if (oldest.done !== true) active.delete(oldest.value);
          }
        }
        return answer;
      } finally {
        if (running.get(k) === lookup) running.delete(k);
      }
    },
  };
}
