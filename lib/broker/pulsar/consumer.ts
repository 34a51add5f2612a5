/**
 * A durable subscription's consumer on Pulsar's WebSocket API, with the port's per-key rules kept
 * here rather than left to Pulsar.
 */
import { context, ROOT_CONTEXT } from "@opentelemetry/api";
import type { Logger } from "../../logging.ts";
import type { BrokerMessage, MessageHandler } from "../broker.ts";
import { decodeMessageId, formatMessageId } from "./message-id.ts";
import type { BackoffOptions, DeliveredFrame, SocketSession } from "./socket.ts";
import { isDeliveredFrame, ReconnectingSocket } from "./socket.ts";

export interface ConsumerOptions {
  /** `ws://host:port/ws/v2/consumer/persistent/tenant/namespace/topic/subscription` without a query. */
  readonly endpoint: string;
  /** The port's topic name, as messages carry it. */
  readonly topic: string;
  readonly subscription: string;
  readonly mode: "key_shared" | "failover";
  /**
   * Pulsar orders failover consumers by name: names that sort in joining order keep the oldest
   * consumer active until it leaves.
   */
  readonly consumerName: string;
  readonly maxInFlight: number;
  readonly redeliveryDelayMs: number;
  readonly maxRedeliveries: number;
  /** Unacknowledged messages the proxy pushes ahead (at most 1,000). */
  readonly receiverQueueSize: number;
  /** Stores the message on the dead-letter topic, durably. */
  readonly deadLetter: (message: BrokerMessage) => Promise<void>;
  /**
   * Handler failures of unacknowledged messages, shared by this process's consumers of the
   * subscription, so a message that comes back through another socket keeps its count.
   */
  readonly failures: FailureMemory;
  readonly logger: Logger;
  readonly connectTimeoutMs: number;
  readonly backoff?: BackoffOptions;
  readonly pingIntervalMs?: number;
}

/** A message this consumer holds: delivered, not yet acknowledged. */
interface Entry {
  readonly id: string;
  /** Pulsar's id, to acknowledge with. */
  readonly rawId: string;
  readonly key: string;
  readonly message: Omit<BrokerMessage, "redeliveryCount">;
  /** What Pulsar reported: deliveries it counted before this one. */
  readonly pulsarCount: number;
  /** Handler failures here, before this delivery. */
  failures: number;
  /** queued: waits for its key's turn; waiting: for its redelivery time. */
  state: "queued" | "waiting" | "running" | "dead-lettering";
  notBefore: number;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Bounded memory of ids, oldest forgotten first. */
export class RecentIds<V> {
  private readonly map = new Map<string, V>();
  private readonly limit: number;

  constructor(limit: number) {
    this.limit = limit;
  }

  get(id: string): V | undefined {
    return this.map.get(id);
  }

  has(id: string): boolean {
    return this.map.has(id);
  }

  set(id: string, value: V): void {
    this.map.delete(id);
    this.map.set(id, value);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value as string);
  }

  delete(id: string): void {
    this.map.delete(id);
  }
}

export type FailureMemory = RecentIds<{ readonly failures: number; readonly retryAt: number }>;

export function createFailureMemory(): FailureMemory {
  return new RecentIds(10_000);
}

export function toBrokerMessage(
  topic: string,
  frame: DeliveredFrame,
  id: string,
): Omit<BrokerMessage, "redeliveryCount"> {
  return {
    topic,
    id,
    key: frame.key ?? "",
    payload: new Uint8Array(Buffer.from(frame.payload, "base64")),
    properties: Object.freeze({ ...frame.properties }),
    publishedAt: new Date(frame.publishTime),
  };
}

/**
 * Redelivery is done here, not with Pulsar's negative acknowledgement, and so is dead-lettering.
 * Measured on Pulsar 4.0.7 through the WebSocket API:
 * - a negatively acknowledged message comes back after later messages of its key were already
 *   delivered (Key_Shared keeps key order only for first deliveries), and if its key moves to
 *   another consumer meanwhile, Pulsar holds the key for the new consumer until this one
 *   acknowledges the later messages it holds, which it must not do before the redelivery: a stall;
 * - Failover subscriptions report redeliveryCount 0 on every redelivery and rewind to the oldest
 *   unacknowledged message, so neither the count nor the dead-letter policy works there;
 * - the dead-letter policy refuses maxRedeliverCount 0, and names the origin in its own id format.
 * So a failed message stays here, first in its key's queue (later messages of the key wait behind
 * it), its handler runs again after `redeliveryDelayMs`, and after `maxRedeliveries` it is
 * published to the dead-letter topic and then acknowledged. `redeliveryCount` is Pulsar's count plus
 * the failures seen here; those are remembered by this process (across reconnects and consumers of
 * the subscription), not across processes: a restarted consumer counts from Pulsar's count again.
 *
 * When the socket drops, messages not yet started are forgotten (Pulsar delivers them again,
 * in order); running handlers finish and their acknowledgements go out on the next socket, and a
 * message delivered again while still in hand, or just acknowledged, is not handled twice.
 */
export class SubscriptionConsumer {
  private readonly options: ConsumerOptions;
  private readonly handler: MessageHandler;
  private readonly socket: ReconnectingSocket;
  private readonly entries = new Map<string, Entry>();
  private readonly keyQueues = new Map<string, Entry[]>();
  /** Keys whose first message may start now, in the order they became ready. */
  private readonly ready = new Set<string>();
  private inFlight = 0;
  private readonly running = new Set<Promise<void>>();
  private readonly acknowledged = new RecentIds<true>(10_000);
  private pendingAcks: string[] = [];
  private closing = false;
  private closed: Promise<void> | undefined;

  constructor(options: ConsumerOptions, handler: MessageHandler) {
    this.options = options;
    this.handler = handler;
    const query = new URLSearchParams({
      subscriptionType: options.mode === "failover" ? "Failover" : "Key_Shared",
      // A new subscription starts at the earliest retained message (the port's rule), not the latest.
      subscriptionInitialPosition: "Earliest",
      receiverQueueSize: String(Math.min(options.receiverQueueSize, 1_000)),
      consumerName: options.consumerName,
    });
    this.socket = new ReconnectingSocket({
      name: `consumer ${options.topic}/${options.subscription}`,
      logger: options.logger,
      url: () => `${options.endpoint}?${query}`,
      onOpen: (session) => this.opened(session),
      onMessage: (frame, session) => this.received(frame, session),
      onDrop: () => this.dropped(),
      ...(options.backoff === undefined ? {} : { backoff: options.backoff }),
      ...(options.pingIntervalMs === undefined ? {} : { pingIntervalMs: options.pingIntervalMs }),
    });
  }

  /** Subscribes; resolves once Pulsar has the consumer. */
  start(): Promise<void> {
    return this.socket.start(this.options.connectTimeoutMs);
  }

  private opened(session: SocketSession): void {
    const acks = this.pendingAcks;
    this.pendingAcks = [];
    for (const rawId of acks) session.send({ messageId: rawId });
  }

  private received(frame: unknown, session: SocketSession): void {
    if (!isDeliveredFrame(frame)) return;
    let id: string;
    try {
      id = formatMessageId(decodeMessageId(frame.messageId));
    } catch (err) {
      this.options.logger.error(
        { err, topic: this.options.topic },
        "Pulsar delivered a message id we cannot read",
      );
      return;
    }
    if (this.acknowledged.has(id)) {
      // Our acknowledgement was lost with a socket: send it again.
      session.send({ messageId: frame.messageId });
      return;
    }
    // Still in hand (running, or moving to the dead-letter topic): its acknowledgement will cover this copy.
    if (this.entries.has(id)) return;
    // Not acknowledged: Pulsar gives it to the subscription's next consumer once this one is gone.
    if (this.closing) return;
    const remembered = this.options.failures.get(id);
    const entry: Entry = {
      id,
      rawId: frame.messageId,
      key: frame.key ?? "",
      message: toBrokerMessage(this.options.topic, frame, id),
      pulsarCount: frame.redeliveryCount ?? 0,
      failures: remembered?.failures ?? 0,
      state: "queued",
      notBefore: remembered?.retryAt ?? 0,
      timer: undefined,
    };
    this.entries.set(id, entry);
    let queue = this.keyQueues.get(entry.key);
    if (queue === undefined) {
      queue = [];
      this.keyQueues.set(entry.key, queue);
    }
    queue.push(entry);
    if (queue.length === 1) this.makeEligible(entry);
    this.dispatch();
  }

  /** The entry is first of its key: ready now, or when its redelivery time comes. */
  private makeEligible(entry: Entry): void {
    const wait = entry.notBefore - Date.now();
    if (wait <= 0) {
      entry.state = "queued";
      this.ready.add(entry.key);
      return;
    }
    entry.state = "waiting";
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (this.entries.get(entry.id) !== entry) return;
      entry.state = "queued";
      this.ready.add(entry.key);
      this.dispatch();
    }, wait);
  }

  private dispatch(): void {
    while (!this.closing && this.inFlight < this.options.maxInFlight && this.ready.size > 0) {
      const key = this.ready.values().next().value as string;
      this.ready.delete(key);
      const head = this.keyQueues.get(key)?.[0];
      if (head?.state === "queued") this.run(head);
    }
  }

  private run(entry: Entry): void {
    entry.state = "running";
    this.inFlight++;
    const message: BrokerMessage = {
      ...entry.message,
      // Every delivery gets its own copy: a handler may keep or change its bytes.
      payload: entry.message.payload.slice(),
      redeliveryCount: entry.pulsarCount + entry.failures,
    };
    // In the root context: a trace continues only through the message's traceparent.
    const run = Promise.resolve()
      .then(() => context.with(ROOT_CONTEXT, () => this.handler(message)))
      .then(
        () => {
          this.inFlight--;
          this.finish(entry);
        },
        (err: unknown) => {
          this.inFlight--;
          this.handlerFailed(entry, message, err);
        },
      )
      .catch((err: unknown) => {
        this.options.logger.error(
          { err, topic: this.options.topic },
          "Pulsar consumer failed to settle a message",
        );
      });
    this.track(run);
  }

  private track(run: Promise<void>): void {
    this.running.add(run);
    void run.finally(() => this.running.delete(run));
  }

  private handlerFailed(entry: Entry, message: BrokerMessage, err: unknown): void {
    if (message.redeliveryCount >= this.options.maxRedeliveries) {
      this.options.logger.warn(
        { err, topic: this.options.topic, subscription: this.options.subscription, id: entry.id },
        "message moved to the dead-letter topic after its last redelivery failed",
      );
      this.deadLetter(entry, message);
      return;
    }
    this.options.logger.debug(
      { err, topic: this.options.topic, subscription: this.options.subscription, id: entry.id },
      "handler failed; message will be redelivered",
    );
    entry.failures++;
    if (this.closing) {
      // Left unacknowledged: the subscription's next consumer gets it; remember the count meanwhile.
      this.options.failures.set(entry.id, {
        failures: entry.failures,
        retryAt: Date.now() + this.options.redeliveryDelayMs,
      });
      entry.state = "waiting";
      return;
    }
    entry.notBefore = Date.now() + this.options.redeliveryDelayMs;
    this.options.failures.set(entry.id, { failures: entry.failures, retryAt: entry.notBefore });
    // Still first of its key: later messages of the key wait behind it.
    this.makeEligible(entry);
    this.dispatch();
  }

  private deadLetter(entry: Entry, message: BrokerMessage): void {
    entry.state = "dead-lettering";
    const run = this.options.deadLetter(message).then(
      () => this.finish(entry),
      (err: unknown) => {
        if (this.entries.get(entry.id) !== entry) return;
        this.options.logger.error(
          { err, topic: this.options.topic, subscription: this.options.subscription, id: entry.id },
          "could not publish to the dead-letter topic; retrying",
        );
        if (this.closing) return; // unacknowledged: the subscription's next consumer gets it again
        entry.timer = setTimeout(() => {
          entry.timer = undefined;
          if (!this.closing) this.deadLetter(entry, message);
        }, this.options.redeliveryDelayMs);
      },
    );
    this.track(run);
  }

  /** Handled (or dead-lettered): acknowledge it, and let its key go on. */
  private finish(entry: Entry): void {
    const queue = this.keyQueues.get(entry.key);
    if (queue !== undefined && queue[0] === entry) {
      queue.shift();
      const next = queue[0];
      if (next === undefined) this.keyQueues.delete(entry.key);
      else this.makeEligible(next);
    }
    this.entries.delete(entry.id);
    this.options.failures.delete(entry.id);
    this.acknowledged.set(entry.id, true);
    if (this.socket.current?.send({ messageId: entry.rawId }) !== true) this.pendingAcks.push(entry.rawId);
    this.dispatch();
  }

  /** The socket dropped: Pulsar gives every unacknowledged message again, so keep only those in hand. */
  private dropped(): void {
    for (const [key, queue] of this.keyQueues) {
      const head = queue[0];
      const keep =
        head !== undefined && (head.state === "running" || head.state === "dead-lettering")
          ? head
          : undefined;
      for (const entry of queue) {
        if (entry === keep) continue;
        if (entry.timer !== undefined) clearTimeout(entry.timer);
        this.entries.delete(entry.id);
      }
      if (keep === undefined) this.keyQueues.delete(key);
      else queue.splice(1);
    }
    this.ready.clear();
  }

  /**
   * Stops taking messages, waits for running handlers (and dead-letter moves), sends their
   * acknowledgements, then closes the socket: the proxy flushes acknowledgements before it closes
   * its consumer, and only then does Pulsar hand what is left to another consumer.
   */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing = true;
      for (const entry of this.entries.values()) {
        if (entry.timer !== undefined) clearTimeout(entry.timer);
        entry.timer = undefined;
      }
      while (this.running.size > 0) await Promise.all([...this.running]);
      const session = this.socket.current;
      if (session !== undefined) this.opened(session);
      await this.socket.close();
    })();
    return this.closed;
  }
}
