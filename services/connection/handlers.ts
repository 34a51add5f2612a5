import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { unimplementedService } from "../../lib/grpc/unimplemented.ts";

/** The connection service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createConnectionHandlers(): GrpcServiceImplementation<typeof ConnectionService> {
  // Every RPC answers UNIMPLEMENTED, naming itself, until the issue that builds this service lands.
  return unimplementedService(ConnectionService);
}
