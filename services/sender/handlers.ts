import { SenderService } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { unimplementedService } from "../../lib/grpc/unimplemented.ts";

/** The sender service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createSenderHandlers(): GrpcServiceImplementation<typeof SenderService> {
  // Every RPC answers UNIMPLEMENTED, naming itself, until the issue that builds this service lands.
  return unimplementedService(SenderService);
}
