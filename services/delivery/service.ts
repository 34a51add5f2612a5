import type { Attributes } from "@opentelemetry/api";
import { DeliveryService } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import type { Broker, BrokerMessage } from "../../lib/broker/broker.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import type { Logger } from "../../lib/logging.ts";
import {
  countRejections,
  getMeter,
  MESSAGE_LATENCY_BUCKETS_S,
  observeBrokerBacklog,
} from "../../lib/metrics.ts";
import type { RateLimiter, RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import type { Registry } from "../../lib/registry/registry.ts";
import { ConversationView } from "../../lib/views/conversation-view.ts";
import { feedConversationView } from "../../lib/views/conversation-view-feed.ts";
import { createBrokerEphemeralEvents } from "./adapters/broker/ephemeral-events.ts";
import { startEventConsumers } from "./adapters/broker/event-consumers.ts";
import { createCoalescingPusher } from "./adapters/grpc/coalescing-pusher.ts";
import { createGrpcEdgePusher } from "./adapters/grpc/edge-pusher.ts";
import { createMemoryCheckpointStore } from "./adapters/memory/checkpoint-store.ts";
import { createMemoryPresenceStore } from "./adapters/memory/presence-store.ts";
import { createRegistryRouteDirectory } from "./adapters/registry/route-directory.ts";
import type { DispatcherOptions } from "./domain/dispatch.ts";
import { createDispatcher } from "./domain/dispatch.ts";
import type { FanOutResult } from "./domain/fan-out.ts";
import { createFanOut } from "./domain/fan-out.ts";
import type { CheckpointStore, DeliveryMetrics, PresenceStore } from "./domain/ports.ts";
import { createPresence } from "./domain/presence.ts";
import { createTyping } from "./domain/typing.ts";
import { createDeliveryHandlers } from "./handlers.ts";

/** Default gRPC port of the delivery service in the cluster profile (PARLEY_DELIVERY_PORT). */
export const DELIVERY_DEFAULT_PORT = 7105;

/**
 * Typing updates per device: clients repeat typing about every 3 s, so 1 a second with a burst of
 * 10 covers start/stop toggles.
 */
export const TYPING_RATE: RateRule = { burst: 10, perSecond: 1 };

export interface DeliveryServiceOptions {
  readonly broker: Broker;
  /** Where edges register their hosts and device streams (etcd in the cluster). */
  readonly registry: Registry;
  readonly logger: Logger;
  /** Finished batches (Redis in the cluster). Default: in process memory with a 1 h TTL. */
  readonly checkpoints?: CheckpointStore;
  /** Presence entries and records (Redis in the cluster). Default: in process memory. */
  readonly presenceStore?: PresenceStore;
  /**
   * The per-device SetTyping limiter (the cluster's Redis one, shared by every worker; the
   * caller's to close). Default: in memory with TYPING_RATE, closed by stop().
   */
  readonly typingLimiter?: RateLimiter;
  /** How often expired presence is swept (and PresenceChanged(offline) published). Default 1 s. */
  readonly presenceSweepMs?: number;
  /** Deadline of one PushBatch call. Default 2 s. */
  readonly pushDeadlineMs?: number;
  readonly retry?: DispatcherOptions["retry"];
  readonly hostCooldownMs?: number;
  /** Delay before a failed event comes back (broker default when unset). */
  readonly redeliveryDelayMs?: number;
  /** Fault tests: runs after an event was pushed and checkpointed, before it is acknowledged. */
  readonly beforeAck?: (message: BrokerMessage, result: FanOutResult) => void | Promise<void>;
}

export interface DeliveryServiceParts {
  readonly registrations: GrpcServiceRegistration[];
  stop(): Promise<void>;
}

/**
 * Delivery: consumes the events to push (messages, receipts, key, contact, membership, group and
 * resend events), routes each target device to the edge host holding its stream through a
 * registry watch cache, and pushes one batch per host over gRPC (EdgePushService), checkpointing
 * finished batches. Serves presence and typing (DeliveryService) and fans their ephemeral events
 * out to contacts and fellow members.
 */
export async function createDeliveryService(options: DeliveryServiceOptions): Promise<DeliveryServiceParts> {
  const logger = options.logger.child({ component: "delivery" });
  const stops: Array<() => Promise<void> | void> = [];
  const stop = async () => {
    for (const step of stops.splice(0).reverse()) await step();
  };
  try {
    const conversations = new ConversationView();
    const feeds = await feedConversationView(options.broker, conversations, logger);
    stops.push(async () => {
      for (const feed of feeds) await feed.close();
    });

    const pusher = createGrpcEdgePusher(
      options.pushDeadlineMs === undefined ? {} : { deadlineMs: options.pushDeadlineMs },
    );
    stops.push(() => pusher.close());
    const routes = await createRegistryRouteDirectory(options.registry, {
      onHostGone: (hostId) => pusher.forget(hostId),
    });
    stops.push(() => routes.close());

    const memoryCheckpoints = options.checkpoints === undefined ? createMemoryCheckpointStore() : undefined;
    if (memoryCheckpoints !== undefined) stops.push(() => memoryCheckpoints.close());
    const checkpoints = options.checkpoints ?? (memoryCheckpoints as CheckpointStore);

    const dispatcher = createDispatcher({
      routes,
      // What several events push to one host in the same turn goes as one PushBatch call.
      pusher: createCoalescingPusher(pusher, options.retry === undefined ? {} : { retry: options.retry }),
      checkpoints,
      metrics: otelDeliveryMetrics(),
      logger,
      ...(options.retry === undefined ? {} : { retry: options.retry }),
      ...(options.hostCooldownMs === undefined ? {} : { hostCooldownMs: options.hostCooldownMs }),
    });
    const fanOut = createFanOut({ conversations, routes, dispatcher, logger });
    const subscriptions = await startEventConsumers({
      broker: options.broker,
      fanOut,
      logger,
      ...(options.redeliveryDelayMs === undefined ? {} : { redeliveryDelayMs: options.redeliveryDelayMs }),
      ...(options.beforeAck === undefined ? {} : { beforeAck: options.beforeAck }),
    });
    // Consumers stop first (stops run in reverse), so no handler pushes on a closed client.
    stops.push(async () => {
      for (const subscription of subscriptions) await subscription.close();
    });

    const memoryPresence = options.presenceStore === undefined ? createMemoryPresenceStore() : undefined;
    if (memoryPresence !== undefined) stops.push(() => memoryPresence.close());
    const events = createBrokerEphemeralEvents(options.broker);
    const presence = createPresence({
      store: options.presenceStore ?? (memoryPresence as PresenceStore),
      events,
      conversations,
    });
    const sweep = setInterval(() => {
      presence.sweep().catch((err: unknown) => logger.warn({ err }, "presence sweep failed"));
    }, options.presenceSweepMs ?? 1_000);
    sweep.unref();
    stops.push(() => clearInterval(sweep));

    const memoryLimiter =
      options.typingLimiter === undefined ? createMemoryRateLimiter(TYPING_RATE) : undefined;
    if (memoryLimiter !== undefined) stops.push(() => memoryLimiter.close());
    const limiter = options.typingLimiter ?? (memoryLimiter as RateLimiter);
    const setTyping = createTyping({ conversations, events, limiter: countRejections(limiter, "typing") });
    stops.push(observeBrokerBacklog(options.broker));

    return {
      registrations: [grpcService(DeliveryService, createDeliveryHandlers({ presence, setTyping }))],
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

function otelDeliveryMetrics(): DeliveryMetrics {
  const meter = getMeter("parley.delivery");
  const fanOut = meter.createHistogram("parley.delivery.fanout", {
    description: "Devices one event addresses, before routing, by event kind",
    unit: "{device}",
    advice: { explicitBucketBoundaries: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000] },
  });
  const hits = meter.createCounter("parley.delivery.checkpoint.hits", {
    description: "Batches skipped on a redelivered event because they were pushed before",
    unit: "{batch}",
  });
  const pushes = meter.createCounter("parley.delivery.pushes", {
    description:
      "Devices per push outcome (pushed, not_connected, stale_route, overloaded, offline, already_pushed, failed)",
    unit: "{device}",
  });
  const latency = meter.createHistogram("parley.message.push.latency", {
    description:
      "Time from a message's acceptance (accepted_at) to its push onto a recipient device's stream, per device",
    unit: "s",
    advice: { explicitBucketBoundaries: [...MESSAGE_LATENCY_BUCKETS_S] },
  });
  // Kinds and outcomes are a handful of constants: one attribute object each, made once.
  const kinds = attributeCache("parley.event.kind");
  const outcomes = attributeCache("parley.push.outcome");
  return {
    fanOut: (kind, devices) => fanOut.record(devices, kinds(kind)),
    checkpointHit: () => hits.add(1),
    pushes: (outcome, devices) => pushes.add(devices, outcomes(outcome)),
    messagePushed: (ms) => latency.record(ms / 1000),
  };
}

function attributeCache(name: string): (value: string) => Attributes {
  const cache = new Map<string, Attributes>();
  return (value) => {
    let attributes = cache.get(value);
    if (attributes === undefined) {
      attributes = Object.freeze({ [name]: value });
      cache.set(value, attributes);
    }
    return attributes;
  };
}
