import { EdgePushService } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { GrpcServer } from "../lib/grpc/server.ts";
import { createGrpcServer, grpcService } from "../lib/grpc/server.ts";
import type { Logger } from "../lib/logging.ts";
import type { StreamHub } from "./streams/stream-hub.ts";

/**
 * The edge's internal gRPC server: EdgePushService, which delivery calls to push onto the device
 * streams this process holds (plus health and reflection, like every internal server). Requests
 * are validated by the server's middleware before `hub.push` sees them.
 */
export function createPushServer(hub: StreamHub, logger: Logger): GrpcServer {
  return createGrpcServer({
    name: "edge-push",
    logger,
    // Pushes keep going while the edge drains; by the time this server stops, no stream is left.
    shutdownTimeoutMs: 2_000,
    services: [
      grpcService(EdgePushService, {
        async pushBatch(request) {
          return hub.push(request);
        },
      }),
    ],
  });
}
