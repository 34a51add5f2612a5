import { ConnectionService } from "../gen/parley/connection/v1/connection_service_pb.ts";
import { DeliveryService } from "../gen/parley/delivery/v1/delivery_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { KeyService } from "../gen/parley/key/v1/key_service_pb.ts";
import { SenderService } from "../gen/parley/sender/v1/sender_service_pb.ts";
import type { GrpcClientOptions, GrpcServiceClient } from "../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../lib/grpc/client.ts";
import type { EdgeConfig } from "./config.ts";

/** The gRPC clients of the internal services the edge calls, one channel each per edge process. */
export interface InternalClients {
  readonly connection: GrpcServiceClient<typeof ConnectionService>;
  readonly key: GrpcServiceClient<typeof KeyService>;
  readonly history: GrpcServiceClient<typeof HistoryService>;
  readonly sender: GrpcServiceClient<typeof SenderService>;
  readonly delivery: GrpcServiceClient<typeof DeliveryService>;
  /** Closes every channel; calls still running fail with CANCELLED. */
  close(): void;
}

/**
 * Clients for the configured addresses (`dns:///name:port` balances over every address of a
 * name). Channels connect lazily, on the first call, so the edge starts before its backends.
 */
export function createInternalClients(
  config: Pick<
    EdgeConfig,
    "connectionAddress" | "keyAddress" | "historyAddress" | "senderAddress" | "deliveryAddress"
  >,
  options: GrpcClientOptions = {},
): InternalClients {
  const connection = createGrpcClient(ConnectionService, config.connectionAddress, options);
  const key = createGrpcClient(KeyService, config.keyAddress, options);
  const history = createGrpcClient(HistoryService, config.historyAddress, options);
  const sender = createGrpcClient(SenderService, config.senderAddress, options);
  const delivery = createGrpcClient(DeliveryService, config.deliveryAddress, options);
  return {
    connection,
    key,
    history,
    sender,
    delivery,
    close() {
      for (const client of [connection, key, history, sender, delivery]) closeChannel(client);
    },
  };
}
