import { fromBinary } from "@bufbuild/protobuf";
import { KeyChangedSchema } from "../../../../gen/parley/events/v1/key_events_pb.ts";
import type { KeyService } from "../../../../gen/parley/key/v1/key_service_pb.ts";
import type { Broker, Subscription } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import type { GrpcServiceClient } from "../../../../lib/grpc/client.ts";
import type { DeviceDirectory } from "../../domain/ports.ts";

// GetIdentityKeys answers for at most this many users per call.
const USERS_PER_CALL = 1000;

/**
 * Active devices from the key service, cached per (asking user, user) for `ttlMs` — the key service
 * answers according to who asks — and dropped as soon as a KeyChanged event for the user arrives,
 * so a new or removed device is seen at once while a 1,000-member group does not cost 1,000 lookups
 * per message.
 */
export async function createKeyServiceDeviceDirectory(options: {
  readonly keys: GrpcServiceClient<typeof KeyService>;
  readonly broker: Broker;
  readonly ttlMs?: number;
  readonly now?: () => number;
}): Promise<DeviceDirectory & { close(): Promise<void> }> {
  const ttlMs = options.ttlMs ?? 30_000;
  const now = options.now ?? Date.now;
  // user -> asking user -> devices, so one KeyChanged drops every asker's copy at once.
  const cache = new Map<
    string,
    Map<string, { readonly devices: readonly string[]; readonly expiresAt: number }>
  >();
  const invalidations: Subscription = await options.broker.follow(Topics.keys, {}, (message) => {
    try {
      const event = fromBinary(KeyChangedSchema, message.payload);
      cache.delete(event.device?.userId ?? message.key);
    } catch {
      cache.delete(message.key);
    }
  });

  return {
    async activeDevices(askingUserId, userIds) {
      const result = new Map<string, readonly string[]>();
      const missing: string[] = [];
      const t = now();
      for (const user of new Set(userIds)) {
        const entry = cache.get(user)?.get(askingUserId);
        if (entry !== undefined && entry.expiresAt > t) result.set(user, entry.devices);
        else missing.push(user);
      }
      for (let i = 0; i < missing.length; i += USERS_PER_CALL) {
        const response = await options.keys.getIdentityKeys({
          userId: askingUserId,
          targetUserIds: missing.slice(i, i + USERS_PER_CALL),
        });
        for (const user of response.users) {
          const devices = user.devices.map((d) => d.deviceId);
          result.set(user.userId, devices);
          const byAsker = cache.get(user.userId) ?? new Map();
          byAsker.set(askingUserId, { devices, expiresAt: t + ttlMs });
          cache.set(user.userId, byAsker);
        }
      }
      return result;
    },
    close: () => invalidations.close(),
  };
}
