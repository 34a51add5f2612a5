import type { MessageInitShape } from "@bufbuild/protobuf";
import type { PushBatchRequestSchema } from "../../../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgePushService, PushOutcome } from "../../../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgeHostState } from "../../../../gen/parley/delivery/v1/registry_pb.ts";
import type { GrpcServiceClient } from "../../../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../../../lib/grpc/client.ts";
import { fromGrpcError } from "../../../../lib/grpc/grpc-error.ts";
import type {
  DeviceOutcome,
  EdgeHostRef,
  EdgePusher,
  PushBatch,
  PushBatchResult,
} from "../../domain/ports.ts";
import { PushCallError } from "../../domain/ports.ts";

export interface GrpcEdgePusherOptions {
  /** Deadline of one PushBatch call. Default 2 s: a hung host must not hold a conversation long. */
  readonly deadlineMs?: number;
}

export interface GrpcEdgePusher extends EdgePusher {
  /** Closes the client of a host that left the registry (or changed its address). */
  forget(hostId: string): void;
  /** Hosts with an open client, for tests and metrics. */
  readonly connectedHosts: readonly string[];
  close(): void;
}

function outcomeOf(outcome: PushOutcome): DeviceOutcome {
  switch (outcome) {
    case PushOutcome.PUSHED:
      return "pushed";
    case PushOutcome.STALE_ROUTE:
      return "stale_route";
    case PushOutcome.OVERLOADED:
      return "overloaded";
    default:
      // NOT_CONNECTED, and anything a newer edge may answer that this delivery does not know:
      // not pushed, not retried.
      return "not_connected";
  }
}

export function toPushBatchRequest(batch: PushBatch): MessageInitShape<typeof PushBatchRequestSchema> {
  return {
    batchId: batch.batchId,
    hostId: batch.hostId,
    routes: batch.routes.map((r) => ({
      device: { userId: r.device.userId, deviceId: r.device.deviceId },
      routeRevision: r.revision,
    })),
    items: batch.items.map((item) => ({
      devices: item.devices.map((d) => ({ userId: d.userId, deviceId: d.deviceId })),
      payload: item.payload,
      cursor: item.cursor ?? new Uint8Array(0),
      traceparent: item.traceparent,
    })),
  };
}

/**
 * EdgePusher over gRPC: one client per edge host, created on its first batch and closed when the
 * host leaves the registry. The client's own retries are off: the dispatcher retries a failed
 * call itself (same batch id) and decides when to give up.
 */
export function createGrpcEdgePusher(options: GrpcEdgePusherOptions = {}): GrpcEdgePusher {
  const deadlineMs = options.deadlineMs ?? 2_000;
  const clients = new Map<
    string,
    { readonly address: string; readonly client: GrpcServiceClient<typeof EdgePushService> }
  >();

  const clientFor = (host: EdgeHostRef) => {
    const existing = clients.get(host.hostId);
    if (existing !== undefined && existing.address === host.pushAddress) return existing.client;
    if (existing !== undefined) closeChannel(existing.client);
    const client = createGrpcClient(EdgePushService, host.pushAddress, {
      defaultDeadlineMs: deadlineMs,
      retryMaxAttempts: 0,
      // One host behind one address: no balancing to do.
      loadBalancing: "pick_first",
    });
    clients.set(host.hostId, { address: host.pushAddress, client });
    return client;
  };

  return {
    async push(host, batch): Promise<PushBatchResult> {
      const client = clientFor(host);
      let response: Awaited<ReturnType<typeof client.pushBatch>>;
      try {
        response = await client.pushBatch(toPushBatchRequest(batch));
      } catch (err) {
        const parley = fromGrpcError(err);
        const retryable = parley.code === "unavailable" || parley.code === "deadline_exceeded";
        throw new PushCallError(
          `PushBatch to ${host.hostId} failed: ${parley.code} ${parley.reason}`,
          retryable,
          parley.reason,
          err,
        );
      }
      return {
        results: response.results.map((r) => ({
          device: { userId: r.device?.userId ?? "", deviceId: r.device?.deviceId ?? "" },
          outcome: outcomeOf(r.outcome),
          routeRevision: r.routeRevision,
        })),
        draining: response.hostState === EdgeHostState.DRAINING,
      };
    },
    forget(hostId) {
      const existing = clients.get(hostId);
      if (existing === undefined) return;
      clients.delete(hostId);
      closeChannel(existing.client);
    },
    get connectedHosts() {
      return [...clients.keys()];
    },
    close() {
      for (const { client } of clients.values()) closeChannel(client);
      clients.clear();
    },
  };
}
