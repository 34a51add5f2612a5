import { durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { DeliveryService } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import { DeviceActivity } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import { PresenceState } from "../../gen/parley/events/v1/presence_events_pb.ts";
import { invalidArgument } from "../../lib/errors.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import type { Presence, PresenceUpdate } from "./domain/presence.ts";
import type { createTyping } from "./domain/typing.ts";

const STATE = {
  online: PresenceState.ONLINE,
  away: PresenceState.AWAY,
  offline: PresenceState.OFFLINE,
} as const;

function activityOf(activity: DeviceActivity): PresenceUpdate["activity"] {
  switch (activity) {
    case DeviceActivity.ACTIVE:
      return "active";
    case DeviceActivity.IDLE:
      return "idle";
    case DeviceActivity.DISCONNECTED:
      return "disconnected";
    default:
      // protovalidate refuses anything else before the handler runs.
      throw invalidArgument("VALIDATION_FAILED", "activity must be ACTIVE, IDLE or DISCONNECTED");
  }
}

/** DeliveryService over the presence and typing use cases: protobuf in, domain calls, protobuf out. */
export function createDeliveryHandlers(deps: {
  readonly presence: Presence;
  readonly setTyping: ReturnType<typeof createTyping>;
}): GrpcServiceImplementation<typeof DeliveryService> {
  return {
    async updatePresence(request) {
      if (request.ttl === undefined) throw invalidArgument("VALIDATION_FAILED", "ttl is required");
      const updates = request.updates.map((u) => {
        if (u.device === undefined) throw invalidArgument("VALIDATION_FAILED", "device is required");
        return {
          device: { userId: u.device.userId, deviceId: u.device.deviceId },
          activity: activityOf(u.activity),
        };
      });
      const expiresAt = await deps.presence.update(request.hostId, updates, durationMs(request.ttl));
      return { expiresAt: timestampFromMs(expiresAt) };
    },

    async setTyping(request) {
      if (request.device === undefined) throw invalidArgument("VALIDATION_FAILED", "device is required");
      const expiresAt = await deps.setTyping(
        { userId: request.device.userId, deviceId: request.device.deviceId },
        request.conversationId,
        request.typing,
      );
      return expiresAt === undefined ? {} : { expiresAt: timestampFromMs(expiresAt) };
    },

    async getPresence(request) {
      if (request.device === undefined) throw invalidArgument("VALIDATION_FAILED", "device is required");
      const views = await deps.presence.get(
        { userId: request.device.userId, deviceId: request.device.deviceId },
        request.userIds,
      );
      return {
        presences: views.map((v) => ({
          userId: v.userId,
          state: STATE[v.state],
          ...(v.lastSeen === undefined ? {} : { lastSeen: timestampFromMs(v.lastSeen) }),
        })),
      };
    },
  };
}
