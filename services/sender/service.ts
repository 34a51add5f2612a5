import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import { KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import { SenderService } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import type { Broker } from "../../lib/broker/broker.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import { newMessageId } from "../../lib/ids.ts";
import type { Logger } from "../../lib/logging.ts";
import { countRejections, getMeter } from "../../lib/metrics.ts";
import type { RateLimiter, RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import { ConversationView } from "../../lib/views/conversation-view.ts";
import { feedConversationView } from "../../lib/views/conversation-view-feed.ts";
import { connectionMembershipSource } from "../../lib/views/membership-catch-up.ts";
import { createAcceptedMessagePublisher } from "./adapters/broker/accepted-message-publisher.ts";
import { createKeyServiceDeviceDirectory } from "./adapters/key-service/device-directory.ts";
import { createMemoryIdempotencyStore } from "./adapters/memory/idempotency-store.ts";
import { createSqliteIdempotencyStore } from "./adapters/sqlite/sqlite-idempotency-store.ts";
import type { IdempotencyStore, SenderMetrics } from "./domain/ports.ts";
import { createSendMessage } from "./domain/send-message.ts";
import { createSenderHandlers } from "./handlers.ts";

/** Default gRPC port of the sender service in the cluster profile (PARLEY_SENDER_PORT). */
export const SENDER_DEFAULT_PORT = 7103;

/** Sends per device: a burst of 50, then 20 a second. */
export const DEFAULT_SEND_RATE: RateRule = { burst: 50, perSecond: 20 };

export interface SenderServiceOptions {
  readonly broker: Broker;
  /** host:port of the key service (device lists). */
  readonly keyAddress: string;
  /**
   * host:port of the connection service, asked when the membership view has not yet heard of a
   * conversation the sender may have just created or joined.
   */
  readonly connectionAddress: string;
  readonly logger: Logger;
  /** Per-device send rate. Default DEFAULT_SEND_RATE. */
  readonly rateLimit?: RateRule;
  /**
   * SQLite file for idempotency keys (the embedded profile's durable stand-in for Redis), so a
   * retry after a crash gets the first id. Without it the keys live in memory only.
   */
  readonly idempotencyPath?: string;
  /** Idempotency keys kept elsewhere (the cluster's Redis); takes precedence over idempotencyPath. */
  readonly idempotency?: IdempotencyStore;
  /** The per-device send limiter (the cluster's Redis one); default in memory with `rateLimit`. */
  readonly rateLimiter?: RateLimiter;
}

export interface SenderServiceParts {
  readonly registrations: GrpcServiceRegistration[];
  stop(): Promise<void>;
}

/**
 * The sender with its in-process adapters (embedded profile): a membership and block view fed
 * from the broker (the connection service asked when it lags), device lists from the key service, idempotency keys in SQLite (or memory), rate
 * limits in memory.
 */
export async function createSenderService(options: SenderServiceOptions): Promise<SenderServiceParts> {
  const view = new ConversationView();
  const feeds = await feedConversationView(options.broker, view, options.logger);
  const keys = createGrpcClient(KeyService, options.keyAddress);
  const connection = createGrpcClient(ConnectionService, options.connectionAddress);
  const devices = await createKeyServiceDeviceDirectory({ keys, broker: options.broker });
  // What the caller passes in is the caller's to close; what is made here is closed by stop().
  const ownIdempotency =
    options.idempotency !== undefined
      ? undefined
      : options.idempotencyPath === undefined
        ? createMemoryIdempotencyStore()
        : createSqliteIdempotencyStore({ path: options.idempotencyPath });
  const idempotency: IdempotencyStore = options.idempotency ?? (ownIdempotency as IdempotencyStore);
  const ownLimiter =
    options.rateLimiter === undefined
      ? createMemoryRateLimiter(options.rateLimit ?? DEFAULT_SEND_RATE)
      : undefined;
  const rateLimiter: RateLimiter = options.rateLimiter ?? (ownLimiter as RateLimiter);
  const sendMessage = createSendMessage({
    conversations: view,
    membership: connectionMembershipSource(connection),
    devices,
    idempotency,
    rateLimiter: countRejections(rateLimiter, "send_message"),
    publisher: createAcceptedMessagePublisher(options.broker),
    metrics: otelSenderMetrics(),
    newMessageId,
  });
  return {
    registrations: [grpcService(SenderService, createSenderHandlers(sendMessage))],
    async stop() {
      for (const feed of feeds) await feed.close();
      await devices.close();
      ownIdempotency?.close();
      ownLimiter?.close();
      closeChannel(keys);
      closeChannel(connection);
    },
  };
}

function otelSenderMetrics(): SenderMetrics {
  const blocked = getMeter("parley.sender").createCounter("parley.sender.blocked_sender.drops", {
    description:
      "Recipients a message did not go to because they block its sender: direct (the 1:1 message is refused) or group (left out)",
    unit: "{recipient}",
  });
  const kinds = {
    direct: Object.freeze({ "parley.conversation.kind": "direct" }),
    group: Object.freeze({ "parley.conversation.kind": "group" }),
  };
  return {
    blockedSenderDrops: (kind, recipients) => blocked.add(recipients, kinds[kind]),
  };
}
