import { HistoryService } from "../../gen/parley/history/v1/history_service_pb.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { unimplementedService } from "../../lib/grpc/unimplemented.ts";

/** The history service's RPC handlers: protobuf in, domain calls, protobuf out. */
export function createHistoryHandlers(): GrpcServiceImplementation<typeof HistoryService> {
  // Every RPC answers UNIMPLEMENTED, naming itself, until the issue that builds this service lands.
  return unimplementedService(HistoryService);
}
