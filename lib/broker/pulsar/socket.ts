/**
 * A typed client for Pulsar's WebSocket API (`/ws/v2/producer|consumer|reader/...`): the frames
 * each endpoint sends and takes, and a socket that reconnects with backoff when it drops.
 *
 * One socket is one Pulsar producer, consumer or reader, created by the proxy while it accepts the
 * upgrade: once `open` fires, the Pulsar side exists (a consumer is subscribed, a reader is
 * positioned). Errors in the upgrade come back as HTTP statuses with an HTML body.
 */
import WebSocket from "ws";
import type { Logger } from "../../logging.ts";

/** What a producer socket takes (ProducerMessage). */
export interface ProducerFrame {
  /** Base64 of the payload. */
  readonly payload: string;
  readonly key?: string;
  readonly properties?: Readonly<Record<string, string>>;
  /** Echoed in the receipt. */
  readonly context: string;
}

/** What a producer socket answers for each frame (ProducerAck). */
export interface ProducerReceipt {
  /** `ok`, or `send-error:<code>` and the like. */
  readonly result: string;
  readonly messageId?: string;
  readonly context?: string;
  readonly errorMsg?: string;
  readonly errorCode?: number;
}

/** A message as consumer and reader sockets push it (ConsumerMessage). */
export interface DeliveredFrame {
  /** Base64 MessageIdData: sent back as is to acknowledge. */
  readonly messageId: string;
  readonly payload: string;
  readonly properties?: Readonly<Record<string, string>>;
  /** ISO-8601. */
  readonly publishTime: string;
  readonly redeliveryCount?: number;
  readonly key?: string;
}

/**
 * What consumer and reader sockets take: an acknowledgement (readers use it as flow control: the
 * proxy pushes at most `receiverQueueSize` unacknowledged messages), a negative one, or a question.
 */
export type ConsumerCommand =
  | { readonly messageId: string }
  | { readonly type: "negativeAcknowledge"; readonly messageId: string }
  | { readonly type: "isEndOfTopic" };

export function isDeliveredFrame(value: unknown): value is DeliveredFrame {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { messageId?: unknown }).messageId === "string" &&
    typeof (value as { payload?: unknown }).payload === "string"
  );
}

export function isProducerReceipt(value: unknown): value is ProducerReceipt {
  return (
    typeof value === "object" && value !== null && typeof (value as { result?: unknown }).result === "string"
  );
}

export class PulsarSocketError extends Error {
  override readonly name = "PulsarSocketError";
  /** The upgrade's HTTP status, undefined when the connection itself failed. */
  readonly status: number | undefined;
  /** Retrying cannot help (bad parameters, missing namespace, not authorized). */
  readonly permanent: boolean;

  constructor(message: string, status: number | undefined, permanent: boolean, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.status = status;
    this.permanent = permanent;
  }
}

function decodeEntities(text: string): string {
  return text
    .replace(/&quot;/g, '"')
    .replace(/&gt;/g, ">")
    .replace(/&lt;/g, "<")
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, "&");
}

function upgradeError(url: string, status: number, body: string): PulsarSocketError {
  const title = /<title>([^<]*)<\/title>/i.exec(body)?.[1] ?? body;
  const detail = decodeEntities(title).replace(/\s+/g, " ").trim().slice(0, 500);
  // 409 is a busy producer name or exclusive consumer: the previous socket's Pulsar side is still
  // being closed, so it is worth retrying. The reader endpoint answers a missing namespace with 500.
  const permanent =
    (status >= 400 && status < 500 && status !== 409 && status !== 429) || /not found/i.test(detail);
  return new PulsarSocketError(
    `Pulsar refused ${new URL(url).pathname}: HTTP ${status}: ${detail}`,
    status,
    permanent,
  );
}

export interface BackoffOptions {
  /** Default 100 ms. */
  readonly initialDelayMs?: number;
  /** Default 5 s. */
  readonly maxDelayMs?: number;
}

/** Exponential backoff with full jitter: a restarted Pulsar is not hit by every client at once. */
export function backoffDelay(attempt: number, options: BackoffOptions = {}): number {
  const initial = options.initialDelayMs ?? 100;
  const max = options.maxDelayMs ?? 5_000;
  return Math.floor(Math.random() * Math.min(max, initial * 2 ** Math.min(attempt, 30)));
}

/** One connection of a ReconnectingSocket. */
export interface SocketSession {
  readonly id: number;
  readonly isOpen: boolean;
  /** Sends one JSON frame; false when this session is no longer open (the frame is not sent). */
  send(frame: ProducerFrame | ConsumerCommand): boolean;
}

export interface ReconnectingSocketOptions {
  /** For logs: what this socket is (`producer chat.messages`). */
  readonly name: string;
  /** The URL of the next attempt: producers and readers resume from their own state. */
  readonly url: () => string;
  readonly logger: Logger;
  readonly onOpen: (session: SocketSession) => void;
  readonly onMessage: (frame: unknown, session: SocketSession) => void;
  /** The session dropped (not by close()); a reconnect follows. */
  readonly onDrop: (session: SocketSession) => void;
  readonly backoff?: BackoffOptions;
  /** A ping every so often; a socket without a pong by the next one is considered dead. Default 15 s. */
  readonly pingIntervalMs?: number;
  /** Default 10 s. */
  readonly handshakeTimeoutMs?: number;
}

/**
 * A WebSocket to one Pulsar endpoint that comes back after drops, with backoff. Frames are JSON.
 */
export class ReconnectingSocket {
  private readonly options: ReconnectingSocketOptions;
  private ws: WebSocket | undefined;
  private session: (SocketSession & { alive: boolean }) | undefined;
  private sessions = 0;
  private attempt = 0;
  /**
   * Drops the owner asked for because the connection's work failed (dropCurrent with
   * `workFailed`) since it last called forgetFailedWork: they add to the backoff, which an open
   * connection alone does not reset, so a send Pulsar refuses every time is not resent on a new
   * socket many times a second until its publish times out.
   */
  private failedWorkDrops = 0;
  private closing = false;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private firstOpen: { resolve: () => void; reject: (err: unknown) => void; deadline: number } | undefined;
  private lastError: unknown;

  constructor(options: ReconnectingSocketOptions) {
    this.options = options;
  }

  get current(): SocketSession | undefined {
    return this.session?.isOpen === true ? this.session : undefined;
  }

  /**
   * Connects; resolves once the first connection is open. Rejects (and gives up) on a permanent
   * refusal, or when no connection opened within `deadlineMs`; later drops are retried for ever.
   */
  start(deadlineMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.firstOpen = { resolve, reject, deadline: Date.now() + deadlineMs };
      this.connect();
    });
  }

  private connect(): void {
    if (this.closing) return;
    const url = this.options.url();
    const ws = new WebSocket(url, {
      handshakeTimeout: this.options.handshakeTimeoutMs ?? 10_000,
      perMessageDeflate: false,
    });
    this.ws = ws;
    let opened = false;
    ws.on("unexpected-response", (request, response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        if (body.length < 16_384) body += chunk;
      });
      // The reason is in the body: read it, then abort the upgrade.
      const refuse = () => {
        this.failed(ws, upgradeError(url, response.statusCode ?? 0, body));
        request.destroy();
      };
      response.on("end", refuse);
      response.on("error", refuse);
    });
    ws.on("error", (err) => {
      if (!opened)
        this.failed(
          ws,
          new PulsarSocketError(`cannot connect to ${url}: ${err.message}`, undefined, false, err),
        );
      else this.options.logger.debug({ err, socket: this.options.name }, "Pulsar socket error");
    });
    ws.on("open", () => {
      opened = true;
      this.attempt = 0;
      const id = ++this.sessions;
      const session = {
        id,
        alive: true,
        get isOpen() {
          return ws.readyState === WebSocket.OPEN;
        },
        send: (frame: ProducerFrame | ConsumerCommand) => {
          if (ws.readyState !== WebSocket.OPEN) return false;
          ws.send(JSON.stringify(frame));
          return true;
        },
      };
      this.session = session;
      ws.on("pong", () => {
        session.alive = true;
      });
      this.startPings(ws, session);
      const first = this.firstOpen;
      this.firstOpen = undefined;
      this.options.onOpen(session);
      first?.resolve();
    });
    ws.on("message", (data, isBinary) => {
      const session = this.session;
      if (session === undefined || isBinary) return;
      let frame: unknown;
      try {
        frame = JSON.parse(data.toString());
      } catch (err) {
        this.options.logger.warn({ err, socket: this.options.name }, "Pulsar sent a frame that is not JSON");
        return;
      }
      this.options.onMessage(frame, session);
    });
    ws.on("close", (code, reason) => {
      if (!opened) return;
      this.stopPings();
      const session = this.session;
      this.session = undefined;
      if (this.closing) return;
      this.options.logger.warn(
        { socket: this.options.name, code, reason: reason.toString() },
        "Pulsar socket dropped; reconnecting",
      );
      if (session !== undefined) this.options.onDrop(session);
      this.scheduleReconnect();
    });
  }

  private failed(ws: WebSocket, err: PulsarSocketError): void {
    if (this.closing || this.ws !== ws || this.session !== undefined) return;
    ws.removeAllListeners("close");
    ws.terminate();
    this.lastError = err;
    const first = this.firstOpen;
    if (first !== undefined && (err.permanent || Date.now() >= first.deadline)) {
      this.firstOpen = undefined;
      this.closing = true;
      first.reject(err);
      return;
    }
    this.options.logger.warn({ err, socket: this.options.name }, "cannot open Pulsar socket; retrying");
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.retryTimer !== undefined) return;
    let delay = backoffDelay(this.attempt++ + this.failedWorkDrops, this.options.backoff);
    // Before the first connection, one more attempt at the deadline at the latest.
    if (this.firstOpen !== undefined)
      delay = Math.max(0, Math.min(delay, this.firstOpen.deadline - Date.now()));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect();
    }, delay);
  }

  private startPings(ws: WebSocket, session: { alive: boolean }): void {
    this.stopPings();
    this.pingTimer = setInterval(() => {
      if (!session.alive) {
        this.options.logger.warn({ socket: this.options.name }, "Pulsar socket missed a pong; dropping it");
        ws.terminate();
        return;
      }
      session.alive = false;
      ws.ping();
    }, this.options.pingIntervalMs ?? 15_000);
    this.pingTimer.unref();
  }

  private stopPings(): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }

  /** The reason the last attempt failed, for errors that outlive it. */
  get failure(): unknown {
    return this.lastError;
  }

  /**
   * Drops the open connection as if the network had: onDrop, then a reconnect. With `workFailed`
   * the reconnect waits longer at each such drop until `forgetFailedWork` is called. A connection
   * already dropping is left alone (counted once).
   */
  dropCurrent(options: { readonly workFailed?: boolean } = {}): void {
    if (this.session?.isOpen !== true) return;
    if (options.workFailed === true) this.failedWorkDrops++;
    this.ws?.terminate();
  }

  /** The failed work went through or was given up: reconnects wait as after a network drop again. */
  forgetFailedWork(): void {
    this.failedWorkDrops = 0;
  }

  /** Closes for good: no reconnect. Resolves once the close handshake is done (or timed out). */
  async close(timeoutMs = 5_000): Promise<void> {
    this.closing = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.stopPings();
    const first = this.firstOpen;
    this.firstOpen = undefined;
    first?.reject(new PulsarSocketError(`${this.options.name} closed before it connected`, undefined, true));
    const ws = this.ws;
    if (ws === undefined || ws.readyState === WebSocket.CLOSED) return;
    if (ws.readyState !== WebSocket.OPEN) {
      ws.terminate();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve();
      }, timeoutMs);
      ws.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close(1000);
    });
  }
}
