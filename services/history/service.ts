import { HistoryService } from "../../gen/parley/history/v1/history_service_pb.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { createHistoryHandlers } from "./handlers.ts";

/** Default gRPC port of the history service in the cluster profile (PARLEY_HISTORY_PORT). */
export const HISTORY_DEFAULT_PORT = 7104;

/** The gRPC services the history process serves, wired to the adapters its main picked. */
export function historyServices(): GrpcServiceRegistration[] {
  return [grpcService(HistoryService, createHistoryHandlers())];
}
