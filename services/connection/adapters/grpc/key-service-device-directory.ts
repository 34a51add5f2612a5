import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Channel } from "nice-grpc";
import { KeyService } from "../../../../gen/parley/key/v1/key_service_pb.ts";
import { isParleyError, unavailable } from "../../../../lib/errors.ts";
import type { GrpcServiceClient } from "../../../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../../../lib/grpc/client.ts";
import { fromGrpcError } from "../../../../lib/grpc/grpc-error.ts";
import type { DeviceDirectory, DeviceIdentityRecord } from "../../domain/device-directory.ts";

/**
 * DeviceDirectory over the key service's GetIdentityKeys (the key service decides what the caller
 * may see). A failure becomes UNAVAILABLE (reason KEY_SERVICE_UNAVAILABLE) rather than an empty
 * device list, which a client could mistake for "all devices removed".
 */
export function createKeyServiceDeviceDirectory(
  target: string | Channel,
): DeviceDirectory & { close(): void } {
  const client: GrpcServiceClient<typeof KeyService> = createGrpcClient(KeyService, target);
  return {
    async identityKeys(callerUserId, userIds) {
      const result = new Map<string, readonly DeviceIdentityRecord[]>(userIds.map((id) => [id, []]));
      if (userIds.length === 0) return result;
      let response: Awaited<ReturnType<typeof client.getIdentityKeys>>;
      try {
        response = await client.getIdentityKeys({ userId: callerUserId, targetUserIds: [...userIds] });
      } catch (err) {
        const cause = isParleyError(err) ? err : fromGrpcError(err);
        throw unavailable("KEY_SERVICE_UNAVAILABLE", "devices are unavailable right now: try again", {
          cause,
          retryDelayMs: 1000,
        });
      }
      for (const user of response.users) {
        result.set(
          user.userId,
          user.devices.map((d) => ({
            deviceId: d.deviceId,
            identityKey: d.identityKey,
            identityKeyCreatedAt:
              d.identityKeyCreatedAt === undefined ? undefined : timestampDate(d.identityKeyCreatedAt),
            previousIdentityKey: d.previousIdentityKey,
            previousIdentityKeyValidUntil:
              d.previousIdentityKeyValidUntil === undefined
                ? undefined
                : timestampDate(d.previousIdentityKeyValidUntil),
          })),
        );
      }
      return result;
    },
    close() {
      if (typeof target === "string") closeChannel(client);
    },
  };
}
