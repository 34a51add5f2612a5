import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { createConnectionHandlers } from "./handlers.ts";

/** Default gRPC port of the connection service in the cluster profile (PARLEY_CONNECTION_PORT). */
export const CONNECTION_DEFAULT_PORT = 7101;

/** The gRPC services the connection process serves, wired to the adapters its main picked. */
export function connectionServices(): GrpcServiceRegistration[] {
  return [grpcService(ConnectionService, createConnectionHandlers())];
}
