import { KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { unimplementedService } from "../../lib/grpc/unimplemented.ts";

/** The key service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createKeyHandlers(): GrpcServiceImplementation<typeof KeyService> {
  // Every RPC answers UNIMPLEMENTED, naming itself, until the issue that builds this service lands.
  return unimplementedService(KeyService);
}
