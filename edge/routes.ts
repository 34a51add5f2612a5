import { create } from "@bufbuild/protobuf";
import { TimestampSchema, timestampDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import { DeviceAddressSchema } from "../gen/parley/common/v1/address_pb.ts";
import { ConnectionService } from "../gen/parley/connection/v1/connection_service_pb.ts";
import { ContactService } from "../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../gen/parley/edge/v1/conversation_service_pb.ts";
import { DeviceService } from "../gen/parley/edge/v1/device_service_pb.ts";
import { HistoryService as EdgeHistoryService } from "../gen/parley/edge/v1/history_service_pb.ts";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { KeyService } from "../gen/parley/key/v1/key_service_pb.ts";
import type { Logger } from "../lib/logging.ts";
import { callingDevice } from "./auth/interceptor.ts";
import type { InternalClients } from "./internal-clients.ts";
import { createPassthroughService } from "./passthrough.ts";

export interface EdgeRouteDependencies {
  readonly clients: InternalClients;
  /** SessionService: device streams and the unary calls beside them (edge/session-service.ts). */
  readonly session: ServiceImpl<typeof SessionService>;
  readonly logger: Logger;
  /** DeviceService.RemoveDevice succeeded: the caller's device `deviceId` was removed at `removedAt`. */
  readonly onDeviceRemoved?: (device: DeviceAddress, removedAt: Date) => void;
}

/** Edge methods whose internal method has another name. */
export const RENAMED_METHODS = {
  contact: { SetMyProfile: "UpsertProfile" },
} as const;

/**
 * Every service the edge serves. Every call is authenticated first (see edge/auth); the four
 * passthrough services forward to their internal service as the token's caller; SessionService is
 * the edge's own (streams, sends, acks, Locate). Building the routes checks that each passthrough
 * lines up with its internal contract, so drift fails at start-up.
 */
export function edgeRoutes(deps: EdgeRouteDependencies): (router: ConnectRouter) => void {
  const { clients, session, logger } = deps;
  const passthroughs = [
    createPassthroughService(ContactService, ConnectionService, clients.connection, {
      methodNames: RENAMED_METHODS.contact,
      logger,
    }),
    createPassthroughService(ConversationService, ConnectionService, clients.connection, { logger }),
    withRemovalNotice(createPassthroughService(DeviceService, KeyService, clients.key, { logger }), deps),
    createPassthroughService(EdgeHistoryService, HistoryService, clients.history, { logger }),
  ] as const;
  return (router) => {
    router.service(SessionService, session);
    router.service(ContactService, passthroughs[0]);
    router.service(ConversationService, passthroughs[1]);
    router.service(DeviceService, passthroughs[2]);
    router.service(EdgeHistoryService, passthroughs[3]);
  };
}

/** DeviceService whose RemoveDevice, once the key service answered, tells `onDeviceRemoved`. */
function withRemovalNotice(
  devices: ServiceImpl<typeof DeviceService>,
  deps: Pick<EdgeRouteDependencies, "onDeviceRemoved">,
): ServiceImpl<typeof DeviceService> {
  const { onDeviceRemoved } = deps;
  if (onDeviceRemoved === undefined) return devices;
  const removeDevice = devices.removeDevice.bind(devices);
  return {
    ...devices,
    async removeDevice(request, ctx) {
      const response = await removeDevice(request, ctx);
      const at = response.removedAt;
      const removedAt = at === undefined ? new Date() : timestampDate(create(TimestampSchema, at));
      const device = create(DeviceAddressSchema, {
        userId: callingDevice(ctx).userId,
        deviceId: request.deviceId,
      });
      onDeviceRemoved(device, removedAt);
      return response;
    },
  };
}
