/**
 * A follower on Pulsar's WebSocket API: a reader of the persistent topic from its earliest retained
 * message, and a reader of the non-persistent topic of the same name for ephemeral messages, both
 * feeding one handler, one call at a time.
 */
import { context, ROOT_CONTEXT } from "@opentelemetry/api";
import type { Logger } from "../../logging.ts";
import type { BrokerMessage } from "../broker.ts";
import { toBrokerMessage } from "./consumer.ts";
import type { MessagePosition } from "./message-id.ts";
import { comparePositions, decodeMessageId, formatMessageId } from "./message-id.ts";
import type { BackoffOptions, SocketSession } from "./socket.ts";
import { isDeliveredFrame, ReconnectingSocket } from "./socket.ts";

export interface FollowerOptions {
  /** `ws://host:port/ws/v2/reader/persistent/tenant/namespace/topic` without a query. */
  readonly persistentEndpoint: string;
  /** The same for `non-persistent`. */
  readonly ephemeralEndpoint: string;
  readonly topic: string;
  readonly compacted: boolean;
  /** The topic's last message when `follow` was called; undefined for an empty topic. */
  readonly lastRetained: MessagePosition | undefined;
  /** Makes ephemeral ids unique: Pulsar gives every non-persistent message the same id. */
  readonly ephemeralIdPrefix: string;
  readonly receiverQueueSize: number;
  /** Ephemeral messages queued for the handler beyond this are dropped (a follower far behind). */
  readonly maxQueuedEphemeral: number;
  readonly logger: Logger;
  readonly connectTimeoutMs: number;
  readonly backoff?: BackoffOptions;
  readonly pingIntervalMs?: number;
}

interface Item {
  readonly message: BrokerMessage;
  /** A persistent message is acknowledged to its reader once handled (the reader's flow control). */
  readonly ack?: { readonly session: number; readonly rawId: string };
  readonly ephemeral?: true;
}

const CAUGHT_UP = Symbol("caught up");

/**
 * Set by publishEphemeral: the id of the last persistent message of the topic whose publish had
 * resolved in that broker. A follower holds the ephemeral message until it has handed that one to
 * its handler, so "published durably, then announced" is seen in that order, although the two
 * arrive on different sockets. Removed before the handler sees the message.
 */
export const EPHEMERAL_AFTER_PROPERTY = "parley-after-id";
/** An ephemeral message is not held longer than this (its persistent predecessor may be gone by retention). */
const MAX_HOLD_MS = 2_000;

/**
 * Compacted topics: the WebSocket reader has no `readCompacted`, so the follower reads the whole
 * retained topic and keeps the latest message of each key until it reaches the message that was
 * last when it started; then it hands over those (in id order, without tombstones) and follows
 * every new message. The namespace keeps compacted topics' messages for ever for this reason
 * (`ensurePulsarNamespace`).
 */
export class Follower {
  private readonly options: FollowerOptions;
  private readonly handler: (message: BrokerMessage) => void | Promise<void>;
  private readonly persistent: ReconnectingSocket;
  private readonly ephemeral: ReconnectingSocket;
  private queue: (Item | typeof CAUGHT_UP)[] = [];
  private head = 0;
  private queuedEphemeral = 0;
  private ephemeralCount = 0;
  /** The last message the persistent reader delivered: a new socket resumes after it. */
  private lastRawId: string | undefined;
  private reachedLastRetained: boolean;
  private readonly latestPerKey = new Map<string, BrokerMessage>();
  /** The id of the last persistent message handed to the handler's queue. */
  private handedOver = "";
  /** Ephemeral messages waiting for their persistent predecessor (EPHEMERAL_AFTER_PROPERTY), in arrival order. */
  private held: { readonly item: Item; readonly after: string; readonly until: number }[] = [];
  private holdTimer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private markCaughtUp: () => void = () => {};
  readonly caughtUp = new Promise<void>((resolve) => {
    this.markCaughtUp = resolve;
  });

  constructor(options: FollowerOptions, handler: (message: BrokerMessage) => void | Promise<void>) {
    this.options = options;
    this.handler = handler;
    this.reachedLastRetained = options.lastRetained === undefined;
    if (this.reachedLastRetained) this.queue.push(CAUGHT_UP);
    const common = {
      logger: options.logger,
      onDrop: () => {},
      ...(options.backoff === undefined ? {} : { backoff: options.backoff }),
      ...(options.pingIntervalMs === undefined ? {} : { pingIntervalMs: options.pingIntervalMs }),
    };
    const receiverQueueSize = String(Math.min(options.receiverQueueSize, 1_000));
    this.persistent = new ReconnectingSocket({
      ...common,
      name: `reader ${options.topic}`,
      url: () =>
        `${options.persistentEndpoint}?${new URLSearchParams({ messageId: this.lastRawId ?? "earliest", receiverQueueSize })}`,
      onOpen: () => {},
      onMessage: (frame, session) => this.receivedPersistent(frame, session),
    });
    this.ephemeral = new ReconnectingSocket({
      ...common,
      name: `ephemeral reader ${options.topic}`,
      url: () =>
        `${options.ephemeralEndpoint}?${new URLSearchParams({ messageId: "latest", receiverQueueSize })}`,
      onOpen: () => {},
      onMessage: (frame, session) => this.receivedEphemeral(frame, session),
    });
  }

  /** Resolves once both readers are open: ephemeral messages published from then on reach the handler. */
  async start(): Promise<void> {
    try {
      await Promise.all([
        this.persistent.start(this.options.connectTimeoutMs),
        this.ephemeral.start(this.options.connectTimeoutMs),
      ]);
    } catch (err) {
      await this.close();
      throw err;
    }
    this.loop = this.run();
  }

  private receivedPersistent(frame: unknown, session: SocketSession): void {
    if (!isDeliveredFrame(frame) || this.closed) return;
    let position: MessagePosition;
    try {
      position = decodeMessageId(frame.messageId);
    } catch (err) {
      this.options.logger.error(
        { err, topic: this.options.topic },
        "Pulsar delivered a message id we cannot read",
      );
      return;
    }
    this.lastRawId = frame.messageId;
    const message: BrokerMessage = {
      ...toBrokerMessage(this.options.topic, frame, formatMessageId(position)),
      redeliveryCount: 0,
    };
    const last = this.options.lastRetained;
    const isLastRetained =
      !this.reachedLastRetained && last !== undefined && comparePositions(position, last) >= 0;
    if (this.options.compacted && !this.reachedLastRetained) {
      // Held here, not by the proxy: acknowledge at once so the replay is not capped by the window.
      session.send({ messageId: frame.messageId });
      this.latestPerKey.delete(message.key);
      this.latestPerKey.set(message.key, message);
      if (!isLastRetained) return;
      for (const latest of this.latestPerKey.values()) {
        if (latest.payload.length > 0) this.queue.push({ message: latest });
      }
      this.latestPerKey.clear();
    } else {
      this.queue.push({ message, ack: { session: session.id, rawId: frame.messageId } });
    }
    this.handedOver = message.id;
    if (isLastRetained) {
      this.reachedLastRetained = true;
      this.queue.push(CAUGHT_UP);
    }
    this.release();
    this.wake();
  }

  private receivedEphemeral(frame: unknown, session: SocketSession): void {
    if (!isDeliveredFrame(frame) || this.closed) return;
    session.send({ messageId: frame.messageId });
    if (this.queuedEphemeral >= this.options.maxQueuedEphemeral) return;
    this.queuedEphemeral++;
    const id = `${this.options.ephemeralIdPrefix}${(++this.ephemeralCount).toString().padStart(16, "0")}`;
    const { [EPHEMERAL_AFTER_PROPERTY]: after, ...properties } = frame.properties ?? {};
    const item: Item = {
      message: { ...toBrokerMessage(this.options.topic, { ...frame, properties }, id), redeliveryCount: 0 },
      ephemeral: true,
    };
    // Behind any held one too: ephemeral messages keep their order among themselves.
    if ((after !== undefined && after > this.handedOver) || this.held.length > 0) {
      this.held.push({ item, after: after ?? "", until: Date.now() + MAX_HOLD_MS });
      this.release();
      return;
    }
    this.queue.push(item);
    this.wake();
  }

  private release(): void {
    const now = Date.now();
    let released = false;
    while (this.held.length > 0) {
      const first = this.held[0] as (typeof this.held)[number];
      if (first.after > this.handedOver && first.until > now) break;
      this.held.shift();
      this.queue.push(first.item);
      released = true;
    }
    if (this.holdTimer !== undefined) clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    const first = this.held[0];
    if (first !== undefined && !this.closed)
      this.holdTimer = setTimeout(() => this.release(), first.until - now);
    if (released) this.wake();
  }

  private wake(): void {
    const wakeUp = this.wakeUp;
    this.wakeUp = undefined;
    wakeUp?.();
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      if (this.head >= this.queue.length) {
        this.queue = [];
        this.head = 0;
        await new Promise<void>((resolve) => {
          this.wakeUp = resolve;
        });
        continue;
      }
      const item = this.queue[this.head++] as Item | typeof CAUGHT_UP;
      if (item === CAUGHT_UP) {
        this.markCaughtUp();
        continue;
      }
      if (item.ephemeral === true) this.queuedEphemeral--;
      try {
        await context.with(ROOT_CONTEXT, () => this.handler(item.message));
      } catch (err) {
        this.options.logger.warn(
          { err, topic: this.options.topic, id: item.message.id },
          "follower handler failed; message skipped",
        );
      }
      const session = this.persistent.current;
      if (item.ack !== undefined && session?.id === item.ack.session)
        session.send({ messageId: item.ack.rawId });
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.holdTimer !== undefined) clearTimeout(this.holdTimer);
    this.wake();
    await Promise.all([this.persistent.close(), this.ephemeral.close()]);
    await this.loop;
    this.markCaughtUp();
  }
}
