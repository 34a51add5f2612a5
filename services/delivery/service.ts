import { DeliveryService } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { createDeliveryHandlers } from "./handlers.ts";

/** Default gRPC port of the delivery service in the cluster profile (PARLEY_DELIVERY_PORT). */
export const DELIVERY_DEFAULT_PORT = 7105;

/** The gRPC services the delivery process serves, wired to the adapters its main picked. */
export function deliveryServices(): GrpcServiceRegistration[] {
  return [grpcService(DeliveryService, createDeliveryHandlers())];
}
