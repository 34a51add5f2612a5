import { KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { createKeyHandlers } from "./handlers.ts";

/** Default gRPC port of the key service in the cluster profile (PARLEY_KEY_PORT). */
export const KEY_DEFAULT_PORT = 7102;

/** The gRPC services the key process serves, wired to the adapters its main picked. */
export function keyServices(): GrpcServiceRegistration[] {
  return [grpcService(KeyService, createKeyHandlers())];
}
