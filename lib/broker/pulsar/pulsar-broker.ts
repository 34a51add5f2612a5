/**
 * The broker port on Apache Pulsar, through its WebSocket API (design.md: the native client cannot
 * be installed here). One Pulsar namespace holds every topic: a port topic `chat.messages` is
 * `persistent://<tenant>/<namespace>/chat.messages`, and its ephemeral messages travel on
 * `non-persistent://<tenant>/<namespace>/chat.messages`.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "../../logging.ts";
import { createLogger } from "../../logging.ts";
import type {
  Broker,
  BrokerMessage,
  FollowOptions,
  FollowSubscription,
  MessageHandler,
  OutgoingBrokerMessage,
  SubscribeOptions,
  Subscription,
  SubscriptionBacklog,
} from "../broker.ts";
import { checkOutgoingMessage, DEAD_LETTER_PROPERTIES, deadLetterTopic } from "../broker.ts";
import type { PulsarAdmin } from "./admin.ts";
import { createPulsarAdmin } from "./admin.ts";
import type { FailureMemory } from "./consumer.ts";
import { createFailureMemory, SubscriptionConsumer } from "./consumer.ts";
import { EPHEMERAL_AFTER_PROPERTY, Follower } from "./follower.ts";
import { EphemeralProducer, TopicProducer } from "./producer.ts";
import type { BackoffOptions } from "./socket.ts";

export interface PulsarBrokerOptions {
  /** Pulsar's web service: admin REST API, and the WebSocket API under `/ws/v2`. */
  readonly webUrl: string;
  readonly tenant: string;
  /** Must exist, with its policies: see `ensurePulsarNamespace`. */
  readonly namespace: string;
  /** Default: a JSON logger at warn. */
  readonly logger?: Logger;
  /** A publish not confirmed by Pulsar within this time fails (its outcome unknown). Default 30 s. */
  readonly publishTimeoutMs?: number;
  /** How long `subscribe` and `follow` try to reach Pulsar before failing. Default 30 s. */
  readonly connectTimeoutMs?: number;
  /** Messages the proxy pushes ahead of acknowledgements, per consumer and reader (at most 1,000). Default 1,000. */
  readonly receiverQueueSize?: number;
  /** Reconnection after a dropped socket. */
  readonly reconnect?: BackoffOptions;
  /** Default 15 s. */
  readonly pingIntervalMs?: number;
  /** Prefix of producer and consumer names, as Pulsar's stats show them. Default "parley". */
  readonly clientName?: string;
}

function checkTopic(topic: string): void {
  // A topic's local name cannot hold a slash; the rest is Pulsar's to judge.
  if (typeof topic !== "string" || topic.length === 0 || topic.length > 512 || topic.includes("/")) {
    throw new TypeError(`invalid topic name ${JSON.stringify(topic)}`);
  }
}

function positiveInt(value: number | undefined, fallback: number, name: string, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

function webSocketBase(webUrl: string): string {
  const url = new URL(webUrl);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`Pulsar webUrl must be http(s), got ${webUrl}`);
  }
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return `${url.toString().replace(/\/+$/, "")}/ws/v2`;
}

/**
 * Connects to Pulsar's web service and checks that the namespace exists (its policies come from
 * `ensurePulsarNamespace`). Sockets open lazily: one producer per topic on first publish, one
 * consumer per `subscribe`, two readers per `follow`.
 */
export async function createPulsarBroker(options: PulsarBrokerOptions): Promise<Broker> {
  const admin = createPulsarAdmin({ webUrl: options.webUrl });
  const namespace = `${options.tenant}/${options.namespace}`;
  if (!(await admin.namespaceExists(namespace))) {
    throw new Error(`Pulsar namespace ${namespace} does not exist: create it with ensurePulsarNamespace`);
  }
  return new PulsarBroker(options, admin);
}

class PulsarBroker implements Broker {
  private readonly admin: PulsarAdmin;
  private readonly logger: Logger;
  private readonly wsBase: string;
  private readonly tenant: string;
  private readonly namespace: string;
  private readonly publishTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly receiverQueueSize: number;
  private readonly reconnect: BackoffOptions | undefined;
  private readonly pingIntervalMs: number | undefined;
  /** Unique to this broker instance: producer names must never be reused (see TopicProducer). */
  private readonly instance: string;
  private readonly clientName: string;
  private consumerCount = 0;
  private readonly producers = new Map<string, TopicProducer>();
  private readonly ephemeralProducers = new Map<string, EphemeralProducer>();
  private readonly consumers = new Set<SubscriptionConsumer>();
  private readonly followers = new Set<Follower>();
  private readonly failureMemories = new Map<string, FailureMemory>();
  /** Persistent topics this broker published to or subscribed to: the ones backlog() reports. */
  private readonly knownTopics = new Set<string>();
  /** Per topic, the id of the last message whose publish resolved here (see EPHEMERAL_AFTER_PROPERTY). */
  private readonly lastPublished = new Map<string, string>();
  /** Publishes are accepted until close() has drained the running handlers (they may publish). */
  private accepting = true;
  private closing: Promise<void> | undefined;

  constructor(options: PulsarBrokerOptions, admin: PulsarAdmin) {
    this.admin = admin;
    this.logger = options.logger ?? createLogger("pulsar-broker", "warn");
    this.wsBase = webSocketBase(options.webUrl);
    this.tenant = options.tenant;
    this.namespace = options.namespace;
    this.publishTimeoutMs = positiveInt(options.publishTimeoutMs, 30_000, "publishTimeoutMs");
    this.connectTimeoutMs = positiveInt(options.connectTimeoutMs, 30_000, "connectTimeoutMs");
    this.receiverQueueSize = positiveInt(options.receiverQueueSize, 1_000, "receiverQueueSize");
    this.reconnect = options.reconnect;
    this.pingIntervalMs = options.pingIntervalMs;
    this.instance = randomUUID();
    this.clientName = options.clientName ?? "parley";
  }

  private endpoint(
    kind: "producer" | "consumer" | "reader",
    domain: "persistent" | "non-persistent",
    topic: string,
  ) {
    return `${this.wsBase}/${kind}/${domain}/${this.tenant}/${this.namespace}/${encodeURIComponent(topic)}`;
  }

  private get socketOptions() {
    return {
      logger: this.logger,
      ...(this.reconnect === undefined ? {} : { backoff: this.reconnect }),
      ...(this.pingIntervalMs === undefined ? {} : { pingIntervalMs: this.pingIntervalMs }),
    };
  }

  publish(topic: string, message: OutgoingBrokerMessage): Promise<{ readonly id: string }> {
    if (!this.accepting) return Promise.reject(new Error("the broker is closed"));
    try {
      checkTopic(topic);
      checkOutgoingMessage(message);
    } catch (err) {
      return Promise.reject(err);
    }
    this.knownTopics.add(topic);
    let producer = this.producers.get(topic);
    if (producer === undefined || producer.failed) {
      producer = new TopicProducer({
        ...this.socketOptions,
        endpoint: this.endpoint("producer", "persistent", topic),
        topic,
        producerName: `${this.clientName}-${this.instance}`,
        publishTimeoutMs: this.publishTimeoutMs,
      });
      this.producers.set(topic, producer);
    }
    return producer.publish(message).then((result) => {
      const last = this.lastPublished.get(topic);
      if (result.id !== "" && (last === undefined || result.id > last))
        this.lastPublished.set(topic, result.id);
      return result;
    });
  }

  publishEphemeral(topic: string, message: OutgoingBrokerMessage): void {
    if (this.closing !== undefined) return;
    checkTopic(topic);
    checkOutgoingMessage(message);
    let producer = this.ephemeralProducers.get(topic);
    if (producer === undefined) {
      producer = new EphemeralProducer({
        ...this.socketOptions,
        endpoint: this.endpoint("producer", "non-persistent", topic),
        topic,
      });
      this.ephemeralProducers.set(topic, producer);
    }
    const after = this.lastPublished.get(topic);
    producer.send(
      after === undefined
        ? message
        : { ...message, properties: { ...message.properties, [EPHEMERAL_AFTER_PROPERTY]: after } },
    );
  }

  async subscribe(topic: string, options: SubscribeOptions, handler: MessageHandler): Promise<Subscription> {
    if (this.closing !== undefined) throw new Error("the broker is closed");
    checkTopic(topic);
    if (typeof options.subscription !== "string" || options.subscription.length === 0) {
      throw new TypeError("subscribe needs a subscription name");
    }
    const mode = options.mode ?? "key_shared";
    if (mode !== "key_shared" && mode !== "failover")
      throw new TypeError(`unknown subscription mode ${mode}`);
    this.knownTopics.add(topic);
    const memoryKey = `${topic}\u0000${options.subscription}`;
    let failures = this.failureMemories.get(memoryKey);
    if (failures === undefined) {
      failures = createFailureMemory();
      this.failureMemories.set(memoryKey, failures);
    }
    const consumer = new SubscriptionConsumer(
      {
        ...this.socketOptions,
        endpoint: `${this.endpoint("consumer", "persistent", topic)}/${encodeURIComponent(options.subscription)}`,
        topic,
        subscription: options.subscription,
        mode,
        // Sorts in joining order, so the failover consumer that joined first stays active (see ConsumerOptions).
        consumerName: [
          this.clientName,
          Date.now().toString().padStart(15, "0"),
          (++this.consumerCount).toString().padStart(9, "0"),
          this.instance,
        ].join("-"),
        maxInFlight: positiveInt(options.maxInFlight, 64, "maxInFlight"),
        redeliveryDelayMs: positiveInt(options.redeliveryDelayMs, 1_000, "redeliveryDelayMs", 0),
        maxRedeliveries: positiveInt(options.maxRedeliveries, 10, "maxRedeliveries", 0),
        receiverQueueSize: this.receiverQueueSize,
        deadLetter: (message) => this.deadLetter(topic, options.subscription, message),
        failures,
        connectTimeoutMs: this.connectTimeoutMs,
      },
      handler,
    );
    this.consumers.add(consumer);
    try {
      await consumer.start();
    } catch (err) {
      this.consumers.delete(consumer);
      await consumer.close();
      throw err;
    }
    let closed: Promise<void> | undefined;
    return {
      close: () => {
        closed ??= consumer.close().finally(() => this.consumers.delete(consumer));
        return closed;
      },
    };
  }

  private async deadLetter(topic: string, subscription: string, message: BrokerMessage): Promise<void> {
    await this.publish(deadLetterTopic(topic, subscription), {
      key: message.key,
      payload: message.payload,
      properties: {
        ...message.properties,
        [DEAD_LETTER_PROPERTIES.realTopic]: topic,
        [DEAD_LETTER_PROPERTIES.originMessageId]: message.id,
      },
    });
  }

  async follow(
    topic: string,
    options: FollowOptions,
    handler: (message: BrokerMessage) => void | Promise<void>,
  ): Promise<FollowSubscription> {
    if (this.closing !== undefined) throw new Error("the broker is closed");
    checkTopic(topic);
    // Asked before the reader opens: "caught up" means past what was retained when follow was called.
    const lastRetained = await this.admin.lastMessagePosition(`${this.tenant}/${this.namespace}/${topic}`);
    const follower = new Follower(
      {
        ...this.socketOptions,
        persistentEndpoint: this.endpoint("reader", "persistent", topic),
        ephemeralEndpoint: this.endpoint("reader", "non-persistent", topic),
        topic,
        compacted: options.compacted === true,
        lastRetained,
        ephemeralIdPrefix: `e-${randomUUID().slice(0, 8)}-`,
        receiverQueueSize: this.receiverQueueSize,
        maxQueuedEphemeral: 10_000,
        connectTimeoutMs: this.connectTimeoutMs,
      },
      handler,
    );
    this.followers.add(follower);
    try {
      await follower.start();
    } catch (err) {
      this.followers.delete(follower);
      throw err;
    }
    let closed: Promise<void> | undefined;
    return {
      caughtUp: follower.caughtUp,
      close: () => {
        closed ??= follower.close().finally(() => this.followers.delete(follower));
        return closed;
      },
    };
  }

  /**
   * Every durable subscription of the topics this broker published to or subscribed to, from
   * Pulsar's topic stats (one admin call per topic), whichever process consumes them.
   */
  async backlog(): Promise<readonly SubscriptionBacklog[]> {
    if (this.closing !== undefined) return [];
    const topics = [...this.knownTopics].sort();
    const perTopic = await Promise.all(
      topics.map(async (topic) =>
        (await this.admin.subscriptionBacklogs(`${this.tenant}/${this.namespace}/${topic}`)).map((b) => ({
          topic,
          ...b,
        })),
      ),
    );
    return perTopic.flat();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all([
        ...[...this.followers].map((follower) => follower.close()),
        ...[...this.consumers].map((consumer) => consumer.close()),
      ]);
      this.accepting = false;
      await Promise.all([
        ...[...this.producers.values()].map((producer) => producer.close()),
        ...[...this.ephemeralProducers.values()].map((producer) => producer.close()),
      ]);
    })();
    return this.closing;
  }
}
