import { SenderService } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { createSenderHandlers } from "./handlers.ts";

/** Default gRPC port of the sender service in the cluster profile (PARLEY_SENDER_PORT). */
export const SENDER_DEFAULT_PORT = 7103;

/** The gRPC services the sender process serves, wired to the adapters its main picked. */
export function senderServices(): GrpcServiceRegistration[] {
  return [grpcService(SenderService, createSenderHandlers())];
}
