import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import type { ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { CloseReason, ServerFrameSchema } from "../../gen/parley/edge/v1/frames_pb.ts";
import type { SyncResponse } from "../../gen/parley/history/v1/history_service_pb.ts";
import type { ErrorCode } from "../../lib/errors.ts";
import { ParleyError } from "../../lib/errors.ts";
import { CLIENT_MESSAGE_MAX_BYTES } from "../../lib/message-limits.ts";
import type { HostLease } from "../../lib/registry/registry.ts";
import type { OutboundQueue } from "./outbound-queue.ts";
import { createOutboundQueue } from "./outbound-queue.ts";

export type StreamKind = "session" | "subscribe";

/**
 * Why a stream ended, for metrics: its Close frame's reason in lower case (`replaced`,
 * `idle_timeout`...), else `ended` (the client finished), `aborted` (the transport went away) or
 * `failed` (an error without a Close frame, e.g. a failed replay).
 */
export type StreamEnd =
  | Lowercase<Exclude<keyof typeof CloseReason, "UNSPECIFIED">>
  | "ended"
  | "aborted"
  | "failed";

const CLOSE_REASON_NAMES = new Map<CloseReason, StreamEnd>(
  Object.entries(CloseReason).map(([name, value]) => [value, name.toLowerCase() as StreamEnd]),
);

/** Why the edge ends a stream: the Close frame's reason and the code the stream then ends with. */
export interface CloseSpec {
  readonly reason: CloseReason;
  readonly code: ErrorCode;
  /** ErrorInfo reason of the stream's end status. */
  readonly errorReason: string;
  readonly message: string;
  /** Sent as Close.retry_after and RetryInfo. */
  readonly retryAfterMs?: number;
}

/** The closes of frames.proto, each with the end code its comment names. */
export const Closes = {
  replaced: {
    reason: CloseReason.REPLACED,
    code: "aborted",
    errorReason: "STREAM_REPLACED",
    message: "a newer stream of this device replaced this one",
  },
  idleTimeout: {
    reason: CloseReason.IDLE_TIMEOUT,
    code: "deadline_exceeded",
    errorReason: "IDLE_TIMEOUT",
    message:
      "no frame from the client for three heartbeat intervals: send a heartbeat every ServerReady.heartbeat_interval",
  },
  tokenExpired: {
    reason: CloseReason.TOKEN_EXPIRED,
    code: "unauthenticated",
    errorReason: "TOKEN_EXPIRED",
    message: "the token of this stream expired: reconnect with a fresh token and resume from your cursor",
  },
  protocolError: {
    reason: CloseReason.PROTOCOL_ERROR,
    code: "invalid_argument",
    errorReason: "PROTOCOL_ERROR",
    message: "too many invalid frames on this stream",
  },
  // RemoveDevice revoked the device (frames.proto: the stream ends with PERMISSION_DENIED); the
  // SDK stops reconnecting.
  deviceRevoked: {
    reason: CloseReason.DEVICE_REVOKED,
    code: "permission_denied",
    errorReason: "DEVICE_REVOKED",
    message:
      "this device was removed from its account: its tokens are revoked and its undelivered messages dropped; sign in again and register the device anew",
  },
  // frames.proto has no reason for a slow consumer; RATE_LIMITED (RESOURCE_EXHAUSTED, back off) is
  // the closest: the device reconnects a little later and resumes from its cursor.
  overloaded: {
    reason: CloseReason.RATE_LIMITED,
    code: "resource_exhausted",
    errorReason: "STREAM_OVERLOADED",
    message:
      "this stream fell behind (too many frames waiting to be written): reconnect and resume from your cursor",
    retryAfterMs: 1_000,
  },
} as const satisfies Record<string, CloseSpec>;

/**
 * The close of a stream that sent a client frame over the contract's size limit
 * (session_service.proto), naming the frame's binary size when the edge knows it. A direct
 * Session refuses such a frame on its announced length, unread, so no FrameError can name it: the
 * stream ends, and ends the same way when Connect read the frame (JSON, say) and it was measured
 * after. Connect refusing a body over its read limit says no size.
 */
export function messageTooLargeClose(frameBytes: number | undefined): CloseSpec {
  const frame = frameBytes === undefined ? "a client frame was" : `a client frame of ${frameBytes} bytes was`;
  return {
    reason: CloseReason.MESSAGE_TOO_LARGE,
    code: "resource_exhausted",
    errorReason: "MESSAGE_TOO_LARGE",
    message: `${frame} larger than ${CLIENT_MESSAGE_MAX_BYTES} bytes in the binary protobuf encoding, the edge's limit; it was not handled (a send in it was not accepted) and would be refused again`,
  };
}

/** The SHUTDOWN close, asking the device to wait `retryAfterMs` before reconnecting. */
export function shutdownClose(retryAfterMs: number): CloseSpec {
  return {
    reason: CloseReason.SHUTDOWN,
    code: "unavailable",
    errorReason: "SHUTDOWN",
    message: "this edge host is shutting down: reconnect (SessionService/Locate) and resume from your cursor",
    retryAfterMs,
  };
}

export interface DeviceStreamOptions {
  readonly id: number;
  readonly kind: StreamKind;
  readonly device: DeviceAddress;
  /** When the caller's token expires: the stream closes with TOKEN_EXPIRED then. */
  readonly expiresAt: Date;
  /** When the caller's token was issued (`iat`): a removal of the device after it revokes the stream. */
  readonly tokenIssuedAt?: Date;
  readonly heartbeatIntervalMs: number;
  readonly queueLimit: number;
  /** Invalid frames tolerated per minute before PROTOCOL_ERROR. */
  readonly maxBadFramesPerMinute: number;
  /** How long a closing stream may take to write its last frames before its transport is cut. */
  readonly closeGraceMs: number;
  /** Cuts the HTTP stream when the client stops reading (a write that would never finish). */
  readonly abortTransport?: () => void;
  /** Called once, when the stream starts closing (whatever the cause). */
  readonly onClose: (stream: DeviceStream) => void;
}

/** One page of the device's inbox, from history's Sync. */
/**
 * One page of the device's inbox after `cursor`; `fromOldestUnacknowledged` (the first page of a
 * resume) starts earlier when a message before the cursor was never acknowledged.
 */
export type FetchPage = (
  cursor: Uint8Array,
  pageSize: number,
  fromOldestUnacknowledged: boolean,
) => Promise<SyncResponse>;

export type PushOutcome = "pushed" | "overloaded" | "closed";

/** How many recent message ids (and receipts) a stream remembers to drop replayed duplicates. */
const RECENT_IDS = 10_000;
/** Largest Sync page a replay asks for. */
const MAX_REPLAY_PAGE = 200;

/**
 * One live Session or Subscribe stream of one device: its bounded outgoing queue, the hold on live
 * pushes while it replays from a cursor, its timers (idle, quiet heartbeat, token expiry) and its
 * close. The stream hub owns the registry side (route, presence); the RPC handler reads client
 * frames and writes `batches()`.
 *
 * Live pushes are held from the moment the stream exists until it goes live: at once (no cursor),
 * or after replaying history from the client's cursor. A replay writes each page of Sync, then
 * releases the held pushes minus those it already wrote (same message id, or the same receipt);
 * messages pushed during the replay but stored after Sync's read come after it, in order.
 */
export class DeviceStream {
  readonly id: number;
  readonly kind: StreamKind;
  readonly device: DeviceAddress;
  readonly key: string;
  readonly openedAt = new Date();
  /** When the token the stream opened with was issued (its `iat`); the opening time when unknown. */
  readonly tokenIssuedAt: Date;
  /** The registry revision of this stream's route; undefined until assignDevice answered. */
  revision: bigint | undefined;
  /** The lease the route was assigned under (released under it: a later lease cannot). */
  lease: HostLease | undefined;
  /** The user's activity as the last heartbeat said. */
  activity: "active" | "idle" = "active";
  /** When presence was last reported for this stream (the hub's refresh reads it). */
  presenceReportedAt = 0;
  /** Why it ended; undefined while open. */
  endedBy: StreamEnd | undefined;

  private readonly options: DeviceStreamOptions;
  private readonly queue: OutboundQueue<ServerFrame>;
  private holding = true;
  private held: ServerFrame[] = [];
  private readonly recent = new Set<string>();
  private interest: ReadonlySet<string> = new Set();
  private lastCursor: Uint8Array = new Uint8Array();
  private lastClientFrameAt = Date.now();
  private lastWriteAt = Date.now();
  private badFrames: number[] = [];
  private closing: { spec: CloseSpec | undefined; error: ParleyError | undefined } | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private idleTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private writerDone = false;
  private resolveClosed: () => void = () => {};
  /** Resolves when the stream starts closing. */
  readonly closed: Promise<void>;

  constructor(options: DeviceStreamOptions) {
    this.options = options;
    this.id = options.id;
    this.kind = options.kind;
    this.device = options.device;
    this.key = deviceKey(options.device);
    this.tokenIssuedAt = options.tokenIssuedAt ?? this.openedAt;
    this.queue = createOutboundQueue(options.queueLimit);
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    const interval = options.heartbeatIntervalMs;
    const quiet = setInterval(() => {
      if (Date.now() - this.lastWriteAt >= interval && this.queue.size === 0) {
        this.reply(frame({ case: "heartbeat", value: { serverTime: timestampFromDate(new Date()) } }));
      }
    }, interval);
    quiet.unref();
    this.timers.push(quiet);
    if (options.kind === "session") this.armIdle();
    this.armExpiry();
  }

  get isClosed(): boolean {
    return this.closing !== undefined;
  }

  get isDraining(): boolean {
    return this.drainTimer !== undefined;
  }

  /** Frames waiting to be written. */
  get queued(): number {
    return this.queue.size;
  }

  /** The presence of these users is forwarded to this stream (replaces the previous set). */
  setPresenceInterest(userIds: readonly string[]): void {
    this.interest = new Set(userIds);
  }

  /** A client frame arrived: the stream is not idle. */
  touch(): void {
    this.lastClientFrameAt = Date.now();
  }

  /**
   * Records an invalid frame; true when the stream has seen too many in the last minute (the
   * caller then closes it with PROTOCOL_ERROR).
   */
  recordBadFrame(): boolean {
    const now = Date.now();
    this.badFrames = this.badFrames.filter((t) => now - t < 60_000);
    this.badFrames.push(now);
    return this.badFrames.length > this.options.maxBadFramesPerMinute;
  }

  /** Queues a frame that answers the client (ready, results, errors, heartbeats); never held. */
  reply(serverFrame: ServerFrame): void {
    if (this.closing !== undefined) return;
    if (!this.queue.offer([serverFrame])) this.close(Closes.overloaded);
  }

  /**
   * Queues pushed frames (all or none): held while replaying, filtered by presence interest,
   * without messages or receipts this stream already carried. A stream whose queue cannot take
   * them is closed (its device resyncs).
   */
  push(frames: readonly ServerFrame[]): PushOutcome {
    if (this.closing !== undefined) return "closed";
    const wanted = frames.filter((f) => f.body.case !== "presence" || this.interest.has(f.body.value.userId));
    if (this.holding) {
      // Held frames have a bound of their own: a replay may fill the queue meanwhile.
      if (this.held.length + wanted.length > this.queue.limit) {
        this.close(Closes.overloaded);
        return "overloaded";
      }
      this.held.push(...wanted);
      return "pushed";
    }
    if (this.queue.size + wanted.length > this.queue.limit) {
      this.close(Closes.overloaded);
      return "overloaded";
    }
    this.queue.offer(this.admit(wanted));
    return "pushed";
  }

  /** Ends the hold without replaying: what was pushed meanwhile is queued. */
  goLive(): void {
    if (!this.holding || this.closing !== undefined) return;
    this.holding = false;
    const held = this.held;
    this.held = [];
    if (!this.queue.offer(this.admit(held))) this.close(Closes.overloaded);
  }

  /**
   * Replays the device's inbox after `cursor`, page by page as the client reads (a page is asked
   * for only once it fits in the queue), then goes live. A failed Sync drops what was held and
   * rethrows: the caller must end the stream, because the held pushes carry cursors past the pages
   * that were not replayed, and a client that saw them would resume beyond messages it never got.
   */
  async resume(cursor: Uint8Array, fetchPage: FetchPage): Promise<void> {
    this.holding = true;
    if (cursor.length > 0) this.lastCursor = cursor;
    const pageSize = Math.max(1, Math.min(MAX_REPLAY_PAGE, Math.floor(this.queue.limit / 2)));
    try {
      let next = cursor;
      // The client's cursor may lie past a message it never got (pushes of different
      // conversations arrive out of inbox order): the first page starts at the oldest one not
      // acknowledged; what comes twice is dropped by message id, here and in the client.
      let first = true;
      for (;;) {
        await this.queue.waitForRoom(pageSize);
        if (this.closing !== undefined) return;
        const page = await fetchPage(next, pageSize, first);
        first = false;
        if (this.closing !== undefined) return;
        const frames: ServerFrame[] = [];
        for (const item of page.items) {
          if (item.item.case === "message") {
            frames.push(frame({ case: "message", value: { message: item.item.value, cursor: item.cursor } }));
          } else if (item.item.case === "receipt") {
            frames.push(frame({ case: "receipt", value: item.item.value }));
          }
        }
        if (!this.queue.offer(this.admit(frames))) {
          this.close(Closes.overloaded);
          return;
        }
        if (!page.more || page.items.length === 0) break;
        next = page.nextCursor;
      }
    } catch (err) {
      this.held = [];
      throw err;
    }
    // What was pushed meanwhile goes out once it fits behind the replay (the client reads on).
    const held = Math.min(this.held.length, this.queue.limit);
    if (this.closing === undefined && held > 0) await this.queue.waitForRoom(held);
    this.goLive();
  }

  /**
   * Asks the device to move: a Drain frame (past the queue limit, after what is queued), then a
   * SHUTDOWN close once `deadlineMs` passed if the client has not left by then.
   */
  drain(reconnectUrl: string, deadlineMs: number, retryAfterMs: number): void {
    if (this.closing !== undefined || this.drainTimer !== undefined) return;
    this.queue.force(
      frame({
        case: "drain",
        value: {
          reconnectUrl,
          resumeCursor: this.lastCursor,
          deadline: durationOf(deadlineMs),
        },
      }),
    );
    this.drainTimer = setTimeout(() => this.close(shutdownClose(retryAfterMs)), deadlineMs);
    this.drainTimer.unref();
  }

  /**
   * Closes the stream: a Close frame after the frames already queued (which are still written,
   * unless the stream is closed for falling behind: then they are dropped, and the device gets
   * them from Sync), then the stream ends with the close's code. The first close wins.
   */
  close(spec: CloseSpec): void {
    if (this.closing !== undefined) return;
    this.endedBy = CLOSE_REASON_NAMES.get(spec.reason) ?? "failed";
    if (spec.errorReason === Closes.overloaded.errorReason) {
      this.held = [];
      this.queue.clear();
    }
    this.queue.force(
      frame({
        case: "close",
        value: {
          reason: spec.reason,
          message: spec.message,
          ...(spec.retryAfterMs === undefined ? {} : { retryAfter: durationOf(spec.retryAfterMs) }),
        },
      }),
    );
    this.finish({
      spec,
      error: new ParleyError(spec.code, spec.errorReason, spec.message, {
        ...(spec.retryAfterMs === undefined ? {} : { retryDelayMs: spec.retryAfterMs }),
      }),
    });
  }

  /** Ends the stream with `error` after what is queued, without a Close frame (e.g. a failed replay). */
  fail(error: ParleyError): void {
    if (this.closing !== undefined) return;
    this.endedBy = "failed";
    this.finish({ spec: undefined, error });
  }

  /** The client finished its side: what is queued is written, then the stream ends OK. */
  end(): void {
    if (this.closing !== undefined) return;
    this.endedBy = "ended";
    this.finish({ spec: undefined, error: undefined });
  }

  /** The transport is gone (client cancelled, connection lost): nothing more can be written. */
  abort(): void {
    this.queue.clear();
    if (this.closing === undefined) {
      this.endedBy = "aborted";
      this.finish({ spec: undefined, error: undefined });
    }
    this.queue.end();
  }

  /** The frames to write, one by one (see `batches`); ends (or throws the close's error) after the last. */
  async *frames(): AsyncGenerator<ServerFrame> {
    for await (const batch of this.batches()) yield* batch;
  }

  /**
   * The frames to write, in batches as they queue up (everything queued when the writer asks);
   * ends, or throws the close's error, after the last. The writer writes each batch back to back,
   * so in one socket write, and asks for the next once the transport took it: while a write
   * waits, frames pile up and the next batch grows by itself.
   */
  async *batches(): AsyncGenerator<readonly ServerFrame[]> {
    try {
      for (;;) {
        const batch = await this.queue.take();
        if (batch === undefined) break;
        yield batch;
        this.lastWriteAt = Date.now();
      }
    } finally {
      this.writerDone = true;
      clearTimeout(this.graceTimer);
      // The writer may stop early (the client went away): the stream is over either way.
      if (this.closing === undefined) this.abort();
    }
    const error = this.closing?.error;
    if (error !== undefined) throw error;
  }

  private finish(closing: { spec: CloseSpec | undefined; error: ParleyError | undefined }): void {
    this.closing = closing;
    this.holding = false;
    this.held = [];
    this.queue.end();
    for (const timer of this.timers) clearInterval(timer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.expiryTimer);
    clearTimeout(this.drainTimer);
    if (!this.writerDone && this.options.abortTransport !== undefined) {
      const abortTransport = this.options.abortTransport;
      this.graceTimer = setTimeout(() => {
        if (!this.writerDone) abortTransport();
      }, this.options.closeGraceMs);
      this.graceTimer.unref();
    }
    this.resolveClosed();
    this.options.onClose(this);
  }

  /** Drops frames this stream already carried (message ids, receipts) and remembers the rest. */
  private admit(frames: readonly ServerFrame[]): ServerFrame[] {
    const fresh: ServerFrame[] = [];
    for (const f of frames) {
      const id = dedupKey(f);
      if (id !== undefined) {
        if (this.recent.has(id)) continue;
        this.recent.add(id);
        if (this.recent.size > RECENT_IDS) {
          const oldest = this.recent.values().next();
          if (oldest.done !== true) this.recent.delete(oldest.value);
        }
      }
      if (f.body.case === "message" && f.body.value.cursor.length > 0) this.lastCursor = f.body.value.cursor;
      fresh.push(f);
    }
    return fresh;
  }

  private armIdle(): void {
    const limit = 3 * this.options.heartbeatIntervalMs;
    const check = () => {
      const silentFor = Date.now() - this.lastClientFrameAt;
      if (silentFor >= limit) {
        this.close(Closes.idleTimeout);
        return;
      }
      this.idleTimer = setTimeout(check, limit - silentFor);
      this.idleTimer.unref();
    };
    this.idleTimer = setTimeout(check, limit);
    this.idleTimer.unref();
  }

  private armExpiry(): void {
    const check = () => {
      const left = this.options.expiresAt.getTime() - Date.now();
      if (left <= 0) {
        this.close(Closes.tokenExpired);
        return;
      }
      // setTimeout holds at most 2^31-1 ms (about 24.8 days).
      this.expiryTimer = setTimeout(check, Math.min(left, 2_147_483_647));
      this.expiryTimer.unref();
    };
    check();
  }
}

/** "<user_id>/<device_id>": '/' never occurs in either id. */
export function deviceKey(device: Pick<DeviceAddress, "userId" | "deviceId">): string {
  return `${device.userId}/${device.deviceId}`;
}

function dedupKey(f: ServerFrame): string | undefined {
  switch (f.body.case) {
    case "message":
      return f.body.value.message === undefined ? undefined : `m:${f.body.value.message.messageId}`;
    case "receipt": {
      const r = f.body.value;
      return `r:${r.conversationId}:${r.reader?.userId}/${r.reader?.deviceId}:${r.kind}:${r.upToSeq}:${r.messageIds.join(",")}`;
    }
    default:
      return undefined;
  }
}

export function frame(body: MessageInitShape<typeof ServerFrameSchema>["body"]): ServerFrame {
  return create(ServerFrameSchema, { body });
}

export function durationOf(ms: number): { seconds: bigint; nanos: number } {
  const whole = Math.max(0, Math.round(ms));
  return { seconds: BigInt(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1_000_000 };
}
