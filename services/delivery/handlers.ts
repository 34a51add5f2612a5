import { DeliveryService } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { unimplementedService } from "../../lib/grpc/unimplemented.ts";

/** The delivery service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createDeliveryHandlers(): GrpcServiceImplementation<typeof DeliveryService> {
  // Every RPC answers UNIMPLEMENTED, naming itself, until the issue that builds this service lands.
  return unimplementedService(DeliveryService);
}
