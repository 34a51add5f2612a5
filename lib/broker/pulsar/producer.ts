/**
 * Producers on Pulsar's WebSocket API: one per topic, keyed messages with properties, resolved on
 * the broker's send receipt.
 */
import type { Logger } from "../../logging.ts";
import type { OutgoingBrokerMessage } from "../broker.ts";
import { decodeMessageId, formatMessageId, isDeduplicatedReceipt } from "./message-id.ts";
import type { BackoffOptions, ProducerFrame, SocketSession } from "./socket.ts";
import { isProducerReceipt, ReconnectingSocket } from "./socket.ts";

export interface ProducerOptions {
  /** `ws://host:port/ws/v2/producer/persistent/tenant/namespace/topic` without a query. */
  readonly endpoint: string;
  /** For logs. */
  readonly topic: string;
  /**
   * The Pulsar producer name: unique to this process and topic, and never reused after a restart
   * (the broker's deduplication remembers each name's last sequence id for hours, so a reused name
   * would have fresh messages dropped as duplicates).
   */
  readonly producerName: string;
  readonly logger: Logger;
  /** A publish not confirmed within this time fails (its outcome is unknown). */
  readonly publishTimeoutMs: number;
  readonly backoff?: BackoffOptions;
  readonly pingIntervalMs?: number;
}

interface PendingPublish {
  /** The sequence id Pulsar gives this message: the producer's initialSequenceId + its place on the socket. */
  readonly seq: number;
  readonly frame: ProducerFrame;
  readonly deadline: number;
  settled: boolean;
  readonly resolve: (id: string) => void;
  readonly reject: (err: unknown) => void;
}

export function toProducerFrame(message: OutgoingBrokerMessage, context: string): ProducerFrame {
  const properties = message.properties ?? {};
  return {
    payload: Buffer.from(
      message.payload.buffer,
      message.payload.byteOffset,
      message.payload.byteLength,
    ).toString("base64"),
    key: message.key,
    ...(Object.keys(properties).length > 0 ? { properties } : {}),
    context,
  };
}

/**
 * A durable producer with broker-side deduplication across reconnects.
 *
 * The WebSocket API ignores per-message sequence ids, but the proxy's Pulsar producer numbers the
 * messages of one socket `initialSequenceId + 1, + 2, ...` in the order they arrive. So every
 * message gets its sequence id here, in publish order, and a socket is always opened with
 * `initialSequenceId` = (oldest unconfirmed message's id - 1) and then sent every unconfirmed
 * message again, in order: each gets the same sequence id as before, and those the broker had
 * already stored come back as duplicates instead of being stored twice. This needs the unconfirmed
 * messages to be contiguous, so messages leave the window only from its front.
 *
 * A duplicate's receipt does not say where the first copy is: its publish resolves with an empty id.
 */
export class TopicProducer {
  private readonly options: ProducerOptions;
  private readonly socket: ReconnectingSocket;
  /**
   * From `head`: the oldest message not known to be settled to the newest, sequence ids contiguous
   * (items before `head` are gone; the array is compacted now and then).
   */
  private window: PendingPublish[] = [];
  private head = 0;
  private nextSeq = 0;
  /** initialSequenceId of the socket being opened or open. */
  private baseSeq = -1;
  private readonly started: Promise<void>;
  private failure: unknown;
  private readonly sweep: ReturnType<typeof setInterval>;
  private drained: (() => void) | undefined;

  constructor(options: ProducerOptions) {
    this.options = options;
    this.socket = new ReconnectingSocket({
      name: `producer ${options.topic}`,
      logger: options.logger,
      url: () => this.url(),
      onOpen: (session) => this.opened(session),
      onMessage: (frame, session) => this.received(frame, session),
      onDrop: () => {},
      ...(options.backoff === undefined ? {} : { backoff: options.backoff }),
      ...(options.pingIntervalMs === undefined ? {} : { pingIntervalMs: options.pingIntervalMs }),
    });
    this.started = this.socket.start(options.publishTimeoutMs).catch((err: unknown) => {
      // Refused for good (bad topic, missing namespace): fail what waits; the broker drops this producer.
      this.failure = err;
      for (const item of this.pending()) this.settle(item, undefined, err);
      this.window = [];
      this.head = 0;
      clearInterval(this.sweep);
    });
    this.sweep = setInterval(
      () => this.expire(),
      Math.max(10, Math.min(1_000, options.publishTimeoutMs / 4)),
    );
    this.sweep.unref();
  }

  /** Refused for good: publishing again needs a new producer. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  publish(message: OutgoingBrokerMessage): Promise<{ readonly id: string }> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const seq = this.nextSeq++;
      const item: PendingPublish = {
        seq,
        frame: toProducerFrame(message, String(seq)),
        deadline: Date.now() + this.options.publishTimeoutMs,
        settled: false,
        resolve: (id) => resolve({ id }),
        reject,
      };
      this.window.push(item);
      this.socket.current?.send(item.frame);
    });
  }

  /** The window's live part. */
  private *pending(): Generator<PendingPublish> {
    for (let i = this.head; i < this.window.length; i++) yield this.window[i] as PendingPublish;
  }

  private url(): string {
    // Only here may settled messages leave: the new socket's numbering starts after them.
    this.trim();
    const first = this.window[this.head];
    this.baseSeq = first === undefined ? this.nextSeq - 1 : first.seq - 1;
    const query = new URLSearchParams({
      producerName: this.options.producerName,
      initialSequenceId: String(this.baseSeq),
      // One message per entry: a batch is acknowledged (and redelivered) as a whole.
      batchingEnabled: "false",
      // The proxy's producer retries until it is closed; publishes time out here instead.
      sendTimeoutMillis: "0",
    });
    return `${this.options.endpoint}?${query}`;
  }

  private opened(session: SocketSession): void {
    // Everything after baseSeq, settled or not, so each message keeps its sequence id.
    for (const item of this.pending()) if (item.seq > this.baseSeq) session.send(item.frame);
  }

  private received(frame: unknown, session: SocketSession): void {
    if (!isProducerReceipt(frame)) return;
    const first = this.window[this.head];
    const seq = Number(frame.context);
    if (first === undefined || !Number.isInteger(seq) || seq < first.seq) return;
    const item = this.window[this.head + seq - first.seq];
    if (item === undefined || item.seq !== seq) return;
    if (frame.result !== "ok" || frame.messageId === undefined) {
      this.options.logger.warn(
        { topic: this.options.topic, result: frame.result, error: frame.errorMsg, seq },
        "Pulsar failed a send; resending on a new socket",
      );
      // A new socket resends every unconfirmed message with its sequence id (see the class comment),
      // later at each refusal in a row: a refusal that repeats costs a few resends before the
      // publish times out, not one per backoff step of a healthy reconnect.
      this.socket.dropCurrent({ workFailed: true });
      return;
    }
    // Only a confirmation on the open socket says resending works: receipts a dropped socket had
    // already read still arrive, and the resend of a refused message comes after them.
    if (session.isOpen) this.socket.forgetFailedWork();
    let id: string;
    try {
      const position = decodeMessageId(frame.messageId);
      id = isDeduplicatedReceipt(position) ? "" : formatMessageId(position);
    } catch (err) {
      this.settle(item, undefined, err);
      this.trim();
      return;
    }
    this.settle(item, id);
    this.trim();
  }

  private settle(item: PendingPublish, id: string | undefined, err?: unknown): void {
    if (item.settled) return;
    item.settled = true;
    if (id !== undefined) item.resolve(id);
    else item.reject(err);
  }

  /** Drops settled messages from the front; only while connected (see url()). */
  private trim(): void {
    while (this.head < this.window.length && (this.window[this.head] as PendingPublish).settled) this.head++;
    if (this.head === this.window.length) {
      this.window = [];
      this.head = 0;
      this.drained?.();
    } else if (this.head > 1_024 && this.head * 2 > this.window.length) {
      this.window = this.window.slice(this.head);
      this.head = 0;
    }
  }

  private expire(): void {
    const now = Date.now();
    for (const item of this.pending()) {
      if (item.deadline > now) break;
      // Given up: its refusals say nothing about the next publish's reconnects.
      if (!item.settled) this.socket.forgetFailedWork();
      this.settle(
        item,
        undefined,
        new Error(
          `publish to ${this.options.topic} not confirmed within ${this.options.publishTimeoutMs} ms`,
        ),
      );
    }
    if (this.socket.current !== undefined) this.trim();
    else if ([...this.pending()].every((item) => item.settled)) this.drained?.();
  }

  /** Waits until every publish is settled (confirmed or timed out), then closes the socket. */
  async close(): Promise<void> {
    await this.started;
    if ([...this.pending()].some((item) => !item.settled)) {
      await new Promise<void>((resolve) => {
        this.drained = resolve;
      });
    }
    clearInterval(this.sweep);
    await this.socket.close();
  }
}

export interface EphemeralProducerOptions {
  /** `ws://host:port/ws/v2/producer/non-persistent/tenant/namespace/topic` without a query. */
  readonly endpoint: string;
  readonly topic: string;
  readonly logger: Logger;
  readonly backoff?: BackoffOptions;
  readonly pingIntervalMs?: number;
  /** Frames kept while the socket is down; more are dropped. */
  readonly maxQueued?: number;
}

/** Fire-and-forget on a non-persistent topic: nothing is stored, receipts are only logged. */
export class EphemeralProducer {
  private readonly options: EphemeralProducerOptions;
  private readonly socket: ReconnectingSocket;
  private queued: ProducerFrame[] = [];
  private sent = 0;
  private stopped = false;

  constructor(options: EphemeralProducerOptions) {
    this.options = options;
    this.socket = new ReconnectingSocket({
      name: `ephemeral producer ${options.topic}`,
      logger: options.logger,
      url: () => options.endpoint,
      onOpen: (session) => {
        const queued = this.queued;
        this.queued = [];
        for (const frame of queued) session.send(frame);
      },
      onMessage: (frame) => {
        if (isProducerReceipt(frame) && frame.result !== "ok") {
          options.logger.debug({ topic: options.topic, error: frame.errorMsg }, "ephemeral message not sent");
        }
      },
      onDrop: () => {},
      ...(options.backoff === undefined ? {} : { backoff: options.backoff }),
      ...(options.pingIntervalMs === undefined ? {} : { pingIntervalMs: options.pingIntervalMs }),
    });
    // Ephemeral messages may be lost: a socket that cannot open only costs them.
    this.socket.start(Number.MAX_SAFE_INTEGER).catch((err: unknown) => {
      if (!this.stopped) options.logger.warn({ err, topic: options.topic }, "ephemeral producer refused");
    });
  }

  send(message: OutgoingBrokerMessage): void {
    const frame = toProducerFrame(message, String(this.sent++));
    if (this.socket.current?.send(frame) === true) return;
    if (this.queued.length < (this.options.maxQueued ?? 1_000)) this.queued.push(frame);
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.socket.close();
  }
}
