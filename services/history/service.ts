import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import { HistoryService } from "../../gen/parley/history/v1/history_service_pb.ts";
import type { Broker, Subscription } from "../../lib/broker/broker.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import type { Logger } from "../../lib/logging.ts";
import { countRejections, observeBrokerBacklog } from "../../lib/metrics.ts";
import type { OutboxRelay } from "../../lib/outbox.ts";
import { startOutboxRelay } from "../../lib/outbox.ts";
import type { RateLimiter, RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import { ConversationView } from "../../lib/views/conversation-view.ts";
import { feedConversationView } from "../../lib/views/conversation-view-feed.ts";
import type { MembershipSource } from "../../lib/views/membership-catch-up.ts";
import { connectionMembershipSource } from "../../lib/views/membership-catch-up.ts";
import { startKeyConsumer } from "./adapters/broker/key-consumer.ts";
import { startMessageConsumer } from "./adapters/broker/message-consumer.ts";
import type { RetentionSweep } from "./adapters/sqlite/retention-sweep.ts";
import { startRetentionSweep } from "./adapters/sqlite/retention-sweep.ts";
import { createSqliteHistoryStore } from "./adapters/sqlite/sqlite-history-store.ts";
import type { History } from "./domain/history.ts";
import { createHistory, DEFAULT_RETENTION_MS } from "./domain/history.ts";
import type { HistoryStore } from "./domain/history-store.ts";
import { createHistoryHandlers } from "./handlers.ts";

/** Default gRPC port of the history service in the cluster profile (PARLEY_HISTORY_PORT). */
export const HISTORY_DEFAULT_PORT = 7104;

/** RequestResend per device: a burst of 10, then one every 5 s. */
export const DEFAULT_RESEND_RATE: RateRule = { burst: 10, perSecond: 0.2 };

export type HistoryServiceOptions = HistoryServiceSettings &
  (
    | {
        /** The SQLite file (`<dataDir>/history.db`, `prepareHistoryFile`), or ":memory:". */
        readonly dbPath: string;
        readonly store?: undefined;
      }
    | {
        /**
         * A store opened by the caller instead of the SQLite file (the cluster's Cassandra store,
         * adapters/cassandra); stop() closes it. No retention sweep runs: it expires its own rows.
         */
        readonly store: HistoryStore;
        readonly dbPath?: undefined;
      }
  );

export interface HistoryServiceSettings {
  /** Where MessageAccepted (and KeyChanged: removed devices) comes from, MessageStored / ReceiptRecorded / ResendRequested go, and memberships are followed. */
  readonly broker: Broker;
  readonly logger: Logger;
  /** How long messages, inbox items and receipts are kept after accepted_at. Default 30 days. */
  readonly retentionMs?: number;
  /** How often the retention sweep of the SQLite file runs. Default 60 s. */
  readonly sweepIntervalMs?: number;
  /** RequestResend per device. Default DEFAULT_RESEND_RATE. */
  readonly resendRateLimit?: RateRule;
  /**
   * The per-device RequestResend limiter (the cluster's Redis one, shared by every replica; the
   * caller's to close). Default: in memory with `resendRateLimit`, closed by stop().
   */
  readonly resendLimiter?: RateLimiter;
  /** Delay before a failed MessageAccepted comes back (default: the broker's). */
  readonly redeliveryDelayMs?: number;
  /**
   * host:port of the connection service, asked when the membership view does not yet know a
   * reader as a member (a group joined a moment ago). Without it the view alone decides.
   */
  readonly connectionAddress?: string;
  /** The clock (tests). */
  readonly now?: () => Date;
}

export interface HistoryServiceParts {
  readonly registrations: GrpcServiceRegistration[];
  /** The use cases, for in-process callers and tests. */
  readonly history: History;
  readonly store: HistoryStore;
  /** Runs the retention sweep now; resolves to the rows removed. */
  sweepNow(): Promise<number>;
  /** Stops consuming, following and sweeping, publishes what the outbox holds, closes the store. */
  stop(): Promise<void>;
}

/**
 * The history service with its embedded adapters: the SQLite store (or the store passed in) and
 * its outbox, relayed to the broker, the membership view fed from `chat.memberships`, the
 * `chat.messages` consumer, the SQLite file's retention sweep and a RequestResend rate limit (in
 * memory unless one is passed in). Both the embedded mesh and services/history/main.ts start it
 * this way.
 */
export async function createHistoryService(options: HistoryServiceOptions): Promise<HistoryServiceParts> {
  const logger = options.logger.child({ component: "history" });
  const store =
    options.store !== undefined ? options.store : createSqliteHistoryStore({ path: options.dbPath });
  const clock = options.now;
  // What the caller passes in is the caller's to close; what is made here is closed by stop().
  const ownLimiter =
    options.resendLimiter === undefined
      ? createMemoryRateLimiter(
          options.resendRateLimit ?? DEFAULT_RESEND_RATE,
          clock === undefined ? {} : { now: () => clock().getTime() },
        )
      : undefined;
  const resendLimiter: RateLimiter = options.resendLimiter ?? (ownLimiter as RateLimiter);
  const started: { close(): Promise<void> }[] = [];
  let relay: OutboxRelay | undefined;
  let sweep: RetentionSweep | undefined;
  const stopObservingBacklog = observeBrokerBacklog(options.broker);
  const stopAll = async () => {
    stopObservingBacklog();
    for (const part of started.splice(0).reverse()) await part.close();
    await sweep?.stop();
    await relay?.stop();
    store.close();
    ownLimiter?.close();
  };
  try {
    const view = new ConversationView();
    started.push(...(await feedConversationView(options.broker, view, logger)));
    let membership: MembershipSource | undefined;
    if (options.connectionAddress !== undefined) {
      const connection = createGrpcClient(ConnectionService, options.connectionAddress);
      started.push({ close: async () => closeChannel(connection) });
      membership = connectionMembershipSource(connection);
    }
    const outboxRelay = startOutboxRelay(store.outbox, options.broker, { logger });
    relay = outboxRelay;
    const history = createHistory({
      store,
      conversations: view,
      ...(membership === undefined ? {} : { membership }),
      resendLimiter: countRejections(resendLimiter, "resend"),
      retentionMs: options.retentionMs ?? DEFAULT_RETENTION_MS,
      onChange: () => outboxRelay.notify(),
      ...(options.now === undefined ? {} : { now: options.now }),
    });
    const consumer: Subscription = await startMessageConsumer({
      broker: options.broker,
      ingest: history.ingest,
      logger,
      ...(options.redeliveryDelayMs === undefined ? {} : { redeliveryDelayMs: options.redeliveryDelayMs }),
    });
    started.push(consumer);
    // A removed device's inbox goes with it (KeyChanged DEVICE_REMOVED on `chat.keys`).
    started.push(
      await startKeyConsumer({ broker: options.broker, deviceRemoved: history.deviceRemoved, logger }),
    );
    const retention =
      options.store !== undefined
        ? undefined
        : startRetentionSweep(store, {
            logger,
            ...(options.sweepIntervalMs === undefined ? {} : { intervalMs: options.sweepIntervalMs }),
            ...(options.now === undefined ? {} : { now: options.now }),
          });
    sweep = retention;
    let stopping: Promise<void> | undefined;
    return {
      registrations: [grpcService(HistoryService, createHistoryHandlers(history, logger))],
      history,
      store,
      sweepNow: () => retention?.runNow() ?? store.sweepExpired(options.now?.() ?? new Date()),
      stop() {
        stopping ??= stopAll();
        return stopping;
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
