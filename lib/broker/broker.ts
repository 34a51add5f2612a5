/**
 * The broker port: what Parley's services rely on from Apache Pulsar, and what the embedded
 * broker reproduces in-process. Keep it narrow: every method here must be implementable on
 * Pulsar's WebSocket API (producers with keys and properties, Key_Shared/Failover subscriptions
 * with individual ack and negative ack, dead-letter topics, readers of compacted topics,
 * non-persistent topics).
 */

/** A message as consumers receive it. */
export interface BrokerMessage {
  readonly topic: string;
  /**
   * Broker-assigned, unique per topic and increasing in publish order: the ids of one persistent
   * topic compare as strings (same length, e.g. fixed-width decimal). Ids of ephemeral messages
   * are unique but not comparable with persistent ones.
   */
  readonly id: string;
  /** Ordering key (Pulsar's partition/message key): messages with one key are handled in order. */
  readonly key: string;
  readonly payload: Uint8Array;
  /** String properties: `traceparent` travels here. */
  readonly properties: Readonly<Record<string, string>>;
  readonly publishedAt: Date;
  /** How many times this message was delivered to this subscription before (0 the first time). */
  readonly redeliveryCount: number;
}

export interface OutgoingBrokerMessage {
  readonly key: string;
  readonly payload: Uint8Array;
  readonly properties?: Readonly<Record<string, string>>;
}

/**
 * A subscription's handler. Resolving acknowledges the message (it is never delivered to this
 * subscription again); throwing negatively acknowledges it: it is redelivered after a delay, and
 * after `maxRedeliveries` it goes to the dead-letter topic instead.
 *
 * Delivery is at-least-once: a message whose handler had not finished when the process died (or
 * whose acknowledgement was not yet stored) is delivered again, so handlers must be idempotent.
 */
export type MessageHandler = (message: BrokerMessage) => Promise<void>;

/**
 * A durable subscription. Its cursor (which messages are acknowledged, individually, not only up
 * to a position) survives restarts; re-subscribing after a crash delivers every unacknowledged
 * message again, in order per key.
 *
 * Initial position: a subscription created for the first time starts at the EARLIEST RETAINED
 * message of the topic, not at the latest (Pulsar's default). Publishers and consumers start in
 * any order, and a message published before its consumer first subscribed must not be lost.
 *
 * Per key, messages are handled one at a time in publish order, also across redeliveries: while a
 * negatively acknowledged message waits for its redelivery, later messages with its key wait
 * behind it (other keys go on).
 */
export interface SubscribeOptions {
  /** Durable subscription name: consumers sharing it share the work (a consumer group). */
  readonly subscription: string;
  /**
   * `key_shared` (default): several consumers, each key handled by one consumer at a time, in
   * order. `failover`: one active consumer for the whole topic, others on standby.
   */
  readonly mode?: "key_shared" | "failover";
  /** Handlers running at once across keys (messages of one key never run concurrently). Default 64. */
  readonly maxInFlight?: number;
  /** Delay before a negatively acknowledged message comes back. Default 1 s. */
  readonly redeliveryDelayMs?: number;
  /**
   * Deliveries after the first before the message goes to `<topic>-<subscription>-DLQ`
   * (`deadLetterTopic`). Default 10: a message failing every time is handled 11 times, the last
   * with `redeliveryCount` 10, then published to the dead-letter topic (same key, payload and
   * properties, plus `DEAD_LETTER_PROPERTIES`) and acknowledged.
   */
  readonly maxRedeliveries?: number;
}

/** The dead-letter topic of a subscription (Pulsar's default name). */
export function deadLetterTopic(topic: string, subscription: string): string {
  return `${topic}-${subscription}-DLQ`;
}

/** Properties a dead-lettered message carries besides its own (the names Pulsar's clients use). */
export const DEAD_LETTER_PROPERTIES = {
  /** The topic the message was first published to. */
  realTopic: "REAL_TOPIC",
  /** Its id there. */
  originMessageId: "ORIGIN_MESSAGE_ID",
} as const;

export interface Subscription {
  /**
   * Stops delivering, waits for this consumer's running handlers and stores their
   * acknowledgements; unacknowledged messages stay for the next consumer of the subscription (in
   * `failover` mode, the next consumer in subscription order takes over only then).
   */
  close(): Promise<void>;
}

/** A follower: also says when it has read everything that was retained when it started. */
export interface FollowSubscription extends Subscription {
  /**
   * Resolves once the handler has seen every message retained when `follow` was called (for a
   * compacted topic, the latest of every key): a local view built from the topic is complete, and
   * a service may report SERVING. Also resolves when the follower is closed.
   */
  readonly caughtUp: Promise<void>;
}

export interface FollowOptions {
  /**
   * For compacted control topics: first replay the latest message of every key (older ones with
   * the same key are skipped, and so are keys whose latest message has an empty payload: a
   * tombstone), in id order, then follow every new message as it is published (tombstones too).
   */
  readonly compacted?: boolean;
}

/**
 * The largest payload any adapter publishes: Pulsar's own limit (its `maxMessageSize`, 5 MiB), so
 * the embedded broker refuses what the cluster's would. The largest send's event stays under it
 * (lib/message-limits.ts).
 */
export const MAX_PAYLOAD_BYTES = 5 * 1024 * 1024;

/** A publish refused for its size: it fails the same way however often it is tried. */
export class PayloadTooLargeError extends RangeError {
  override readonly name = "PayloadTooLargeError";
}

/**
 * What every adapter refuses before publishing: a message without a string key, bytes or string
 * properties, and a payload over MAX_PAYLOAD_BYTES, at once: Pulsar would refuse it on every
 * attempt, and a publish that cannot succeed must fail rather than be retried until it times out.
 */
export function checkOutgoingMessage(message: OutgoingBrokerMessage): void {
  if (typeof message.key !== "string") throw new TypeError("a broker message needs a string key");
  if (!(message.payload instanceof Uint8Array)) throw new TypeError("a broker message payload must be bytes");
  if (message.payload.length > MAX_PAYLOAD_BYTES) {
    throw new PayloadTooLargeError(
      `a broker message payload of ${message.payload.length} bytes is over the limit of ${MAX_PAYLOAD_BYTES} bytes (Pulsar's maxMessageSize)`,
    );
  }
  for (const [name, value] of Object.entries(message.properties ?? {})) {
    if (typeof value !== "string") throw new TypeError(`broker message property ${name} is not a string`);
  }
}

export interface Broker {
  /**
   * Publishes to a persistent topic and resolves once the broker has stored it durably (the
   * sender's SENT depends on it). Per key, messages are delivered in publish order.
   * Resolves with the id consumers will see, or with an empty id when the broker stored the message
   * but cannot say where: Pulsar answers a send it deduplicated (resent after a lost receipt)
   * without the first copy's id. Use the id for tracing and logs, not for logic.
   */
  publish(topic: string, message: OutgoingBrokerMessage): Promise<{ readonly id: string }>;
  /**
   * Fire-and-forget for non-persistent topics (presence, typing): only followers of the topic at
   * that moment get it; nothing is stored and durable subscriptions never see it. A follower far
   * behind may miss ephemeral messages.
   */
  publishEphemeral(topic: string, message: OutgoingBrokerMessage): void;
  /** A durable subscription with acknowledgements (see SubscribeOptions). */
  subscribe(topic: string, options: SubscribeOptions, handler: MessageHandler): Promise<Subscription>;
  /**
   * A non-durable reader from the start of the retained topic (or only the latest per key when
   * `compacted`), then live; also receives ephemeral messages while it follows. Used for local
   * views (the sender's membership and blocks) and for presence and typing fan-out. Handler calls
   * of one follower run one at a time, in order; a handler that throws is logged and skipped.
   */
  follow(
    topic: string,
    options: FollowOptions,
    handler: (message: BrokerMessage) => void | Promise<void>,
  ): Promise<FollowSubscription>;
  /**
   * Stops deliveries, waits for running handlers (they may still publish meanwhile), stores their
   * acknowledgements, then releases the broker; publishing afterwards fails.
   */
  close(): Promise<void>;
  /**
   * Optional, for metrics (`parley.broker.backlog`): the messages each durable subscription has not
   * acknowledged yet (Pulsar's `msgBacklog` in topic stats), for the subscriptions of the topics
   * this broker client knows. Called at every metrics collection (every few seconds), so an
   * adapter implements it only when it is cheap; without it the backlog is not reported.
   */
  backlog?(): Promise<readonly SubscriptionBacklog[]>;
}

/** One durable subscription's backlog. */
export interface SubscriptionBacklog {
  readonly topic: string;
  readonly subscription: string;
  /** Messages published to the topic and not yet acknowledged by the subscription. */
  readonly messages: number;
}

/** Topic names, one place for every publisher and consumer. */
export const Topics = {
  /** MessageAccepted, key = conversation_id. sender -> history. */
  messages: "chat.messages",
  /** MessageStored, key = conversation_id. history -> delivery. */
  deliveries: "chat.deliveries",
  /** ReceiptRecorded, key = conversation_id. history -> delivery. */
  receipts: "chat.receipts",
  /** KeyChanged, key = user_id. key -> delivery. */
  keys: "chat.keys",
  /** PrekeysLow, key = user_id/device_id. key -> delivery. */
  prekeys: "chat.prekeys",
  /** MembershipChanged (compacted), key = conversation_id. connection -> sender, delivery. */
  memberships: "chat.memberships",
  /** BlockChanged (compacted), key = blocker/blocked. connection -> sender. */
  blocks: "chat.blocks",
  /** ContactChanged, key = sorted user pair. connection -> delivery. */
  contacts: "chat.contacts",
  /** GroupRenamed, key = conversation_id. connection -> delivery. */
  groups: "chat.groups",
  /** ResendRequested, key = conversation_id. history -> delivery. */
  resends: "chat.resends",
  /** PresenceChanged (non-persistent), key = user_id. delivery -> delivery workers. */
  presence: "chat.presence",
  /** TypingChanged (non-persistent), key = conversation_id. delivery -> delivery workers. */
  typing: "chat.typing",
} as const;
