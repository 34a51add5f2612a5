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
  /** Broker-assigned, unique per topic and increasing in publish order. */
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
 */
export type MessageHandler = (message: BrokerMessage) => Promise<void>;

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
  /** Deliveries after the first before the message goes to `<topic>-<subscription>-DLQ`. Default 10. */
  readonly maxRedeliveries?: number;
}

export interface Subscription {
  /** Stops delivering; unacknowledged messages stay for the next consumer of the subscription. */
  close(): Promise<void>;
}

export interface FollowOptions {
  /**
   * For compacted control topics: first replay the latest message of every key (older ones with
   * the same key are skipped), then follow new messages as they are published.
   */
  readonly compacted?: boolean;
}

export interface Broker {
  /**
   * Publishes to a persistent topic and resolves once the broker has stored it durably (the
   * sender's SENT depends on it). Per key, messages are delivered in publish order.
   */
  publish(topic: string, message: OutgoingBrokerMessage): Promise<{ readonly id: string }>;
  /** Fire-and-forget for non-persistent topics (presence, typing): only live followers get it. */
  publishEphemeral(topic: string, message: OutgoingBrokerMessage): void;
  /** A durable subscription with acknowledgements (see SubscribeOptions). */
  subscribe(topic: string, options: SubscribeOptions, handler: MessageHandler): Promise<Subscription>;
  /**
   * A non-durable reader from the start of the retained topic (or only the latest per key when
   * `compacted`), then live; also receives ephemeral messages while it follows. Used for local
   * views (the sender's membership and blocks) and for presence and typing fan-out.
   */
  follow(
    topic: string,
    options: FollowOptions,
    handler: (message: BrokerMessage) => void | Promise<void>,
  ): Promise<Subscription>;
  close(): Promise<void>;
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
