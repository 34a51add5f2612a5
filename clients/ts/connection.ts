import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import type { Close, Drain, ServerFrame, ServerReady } from "../../gen/parley/edge/v1/frames_pb.ts";
import { CloseReason } from "../../gen/parley/edge/v1/frames_pb.ts";
import type { SessionRequestSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { SessionService } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { createAsyncQueue } from "./async-queue.ts";
import type { Backoff } from "./backoff.ts";
import { ClientReason, isRetryableReadError, ParleyClientError, toClientError } from "./client-error.ts";
import type { Clock, TimerHandle } from "./clock.ts";
import { sleep } from "./clock.ts";
import type { EdgeTransports } from "./edge-transport.ts";
import type { FrameSink } from "./frame-outbound.ts";
import { withRetries } from "./retry.ts";
import type { TokenSource } from "./token-source.ts";

/**
 * - `idle`: not started. `connecting`: opening the first stream. `ready`: ServerReady received.
 * - `reconnecting`: the stream ended; a new one opens after `retryInMs`.
 * - `replaced`: another stream of this device took over (Close REPLACED); nothing reconnects until `connect()`.
 * - `closed`: stopped for good (the app closed the client) or until `connect()` (a terminal refusal: revoked
 *   device, invalid or unrenewable token; see `error`).
 */
export type ConnectionState = "idle" | "connecting" | "ready" | "reconnecting" | "replaced" | "closed";

export type StateChange = {
  readonly state: ConnectionState;
  readonly previous: ConnectionState;
  /** For `reconnecting`: how long until the next attempt. */
  readonly retryInMs?: number;
  /** Why the stream ended or the client stopped, when it was not the app's doing. */
  readonly error?: ParleyClientError;
};

export type ConnectionOptions = {
  readonly mode: "bidi" | "browser";
  readonly transports: EdgeTransports;
  readonly tokens: TokenSource;
  readonly clock: Clock;
  readonly backoff: Backoff;
  /** Ask SessionService.Locate which host to open the stream on (not after a Drain, which names it). */
  readonly locate: boolean;
  /** Used until ServerReady gives the edge's interval. */
  readonly heartbeatIntervalMs: number;
  readonly clientVersion: string;
  readonly resumeCursor: () => Uint8Array;
  readonly presence: () => readonly string[];
  readonly idle: () => boolean;
  /** Runs before each stream opens (the client syncs there when it has no cursor yet). */
  readonly beforeOpen: (signal: AbortSignal) => Promise<void>;
  /** The stream is ready; `sink` writes frames on it (bidi mode only). */
  readonly onReady: (ready: ServerReady, sink: FrameSink | undefined) => void;
  /** Every frame but ready, drain, close and heartbeat. */
  readonly onFrame: (frame: ServerFrame) => void;
  readonly onDrain: (drain: Drain) => void;
  /** The ready stream ended. */
  readonly onStreamEnd: () => void;
  /** The edge refused the resume cursor (INVALID_ARGUMENT [INVALID_CURSOR]). */
  readonly onInvalidCursor: () => void;
  readonly onStateChange: (change: StateChange) => void;
};

export type Connection = {
  /** Starts (or restarts after `replaced`/`closed`) the loop; resolves at the next ready, rejects on a terminal stop. */
  start(): Promise<void>;
  /** Stops for good: closes the stream, no reconnect. */
  stop(error: Error): Promise<void>;
  /** Closes the current stream and opens a new one at once (the browser mode's presence change). */
  restart(): void;
  /** Sends a heartbeat now (bidi), e.g. when the idle flag changed. */
  heartbeatNow(): void;
  readonly state: ConnectionState;
  /** Whether a stream is open and ready. */
  readonly streaming: boolean;
  /** Whether a stream is being opened or is open (past `beforeOpen`): it owns the inbox cursor. */
  readonly streamOpen: boolean;
};

type Ending = {
  wasReady: boolean;
  drain?: Drain;
  close?: Close;
  error?: unknown;
  restart?: boolean;
};

type Decision =
  | { readonly stop: "replaced" | "closed"; readonly error: ParleyClientError }
  | {
      readonly stop?: undefined;
      readonly delayMs: number;
      readonly error?: ParleyClientError;
    };

const RESTART = Symbol("restart");

/**
 * Each Close reason as a status code (the one the stream ends with, per the contract). Typed over
 * every reason, so a value added to the contract fails the build until it is mapped here.
 */
const CLOSE_CODES: Record<Exclude<CloseReason, typeof CloseReason.UNSPECIFIED>, Code> = {
  [CloseReason.REPLACED]: Code.Aborted,
  [CloseReason.IDLE_TIMEOUT]: Code.DeadlineExceeded,
  [CloseReason.TOKEN_EXPIRED]: Code.Unauthenticated,
  [CloseReason.DEVICE_REVOKED]: Code.PermissionDenied,
  [CloseReason.PROTOCOL_ERROR]: Code.InvalidArgument,
  [CloseReason.SHUTDOWN]: Code.Unavailable,
  [CloseReason.RATE_LIMITED]: Code.ResourceExhausted,
  [CloseReason.MESSAGE_TOO_LARGE]: Code.ResourceExhausted,
};

/**
 * The device's stream and its lifecycle: opens Session (bidi: ClientHello with the resume cursor)
 * or Subscribe (browser), answers the edge's heartbeat interval, treats three silent intervals as
 * a dead stream, follows Drain to the named host with its cursor, obeys Close (REPLACED and
 * DEVICE_REVOKED stop; TOKEN_EXPIRED refreshes the token; `retry_after` is a floor on the wait), and
 * reconnects after failures with full-jitter exponential backoff, reset once a stream is ready.
 */
export function createConnection(options: ConnectionOptions): Connection {
  let state: ConnectionState = "idle";
  let loop: Promise<void> | undefined;
  let stopController: AbortController | undefined;
  let streamController: AbortController | undefined;
  let waiters: { resolve: () => void; reject: (error: unknown) => void }[] = [];
  let streaming = false;
  let streamOpen = false;
  let sink: FrameSink | undefined;
  let heartbeatTimer: TimerHandle | undefined;
  let livenessTimer: TimerHandle | undefined;
  let nextFrameId = 1n;
  let drainUrl: string | undefined;

  const setState = (next: ConnectionState, extra: { retryInMs?: number; error?: ParleyClientError } = {}) => {
    if (next === state && next !== "reconnecting") {
      return;
    }
    const previous = state;
    state = next;
    options.onStateChange({ state: next, previous, ...extra });
  };

  const settleWaiters = (error?: unknown) => {
    const pending = waiters;
    waiters = [];
    for (const waiter of pending) {
      if (error === undefined) {
        waiter.resolve();
      } else {
        waiter.reject(error);
      }
    }
  };

  const clearTimers = () => {
    if (heartbeatTimer !== undefined) {
      options.clock.clearTimeout(heartbeatTimer);
      heartbeatTimer = undefined;
    }
    if (livenessTimer !== undefined) {
      options.clock.clearTimeout(livenessTimer);
      livenessTimer = undefined;
    }
  };

  const armLiveness = (controller: AbortController, intervalMs: number) => {
    if (livenessTimer !== undefined) {
      options.clock.clearTimeout(livenessTimer);
    }
    livenessTimer = options.clock.setTimeout(() => {
      controller.abort(
        new ParleyClientError(
          Code.Unavailable,
          ClientReason.STREAM_STALLED,
          `no frame from the edge for ${3 * intervalMs} ms`,
          { transportFailure: true },
        ),
      );
    }, 3 * intervalMs);
  };

  const heartbeat = () => {
    sink?.push({ case: "heartbeat", value: { idle: options.idle() } });
  };

  const armHeartbeat = (intervalMs: number) => {
    heartbeatTimer = options.clock.setTimeout(() => {
      heartbeat();
      armHeartbeat(intervalMs);
    }, intervalMs);
  };

  async function pickUrl(signal: AbortSignal): Promise<string> {
    if (drainUrl !== undefined) {
      options.transports.setCurrentUrl(drainUrl);
      drainUrl = undefined;
    } else if (options.locate) {
      const session = createClient(SessionService, options.transports.forUrl(options.transports.baseUrl));
      const located = await withRetries(() => session.locate({}, { signal }), {
        attempts: 3,
        backoff: options.backoff,
        clock: options.clock,
        retryable: isRetryableReadError,
        signal,
      });
      options.transports.setCurrentUrl(located.edgeUrl || options.transports.baseUrl);
    }
    return options.transports.currentUrl();
  }

  async function* openStream(url: string, signal: AbortSignal): AsyncGenerator<ServerFrame> {
    const session = createClient(SessionService, options.transports.forUrl(url));
    const resumeCursor = options.resumeCursor();
    const presence = [...options.presence()];
    if (options.mode === "browser") {
      sink = undefined;
      const request = { resumeCursor, presence: { userIds: presence }, clientVersion: options.clientVersion };
      for await (const response of session.subscribe(request, { signal })) {
        if (response.frame !== undefined) {
          yield response.frame;
        }
      }
      return;
    }
    const queue = createAsyncQueue<MessageInitShape<typeof SessionRequestSchema>>();
    const streamSink: FrameSink = {
      push(body) {
        const frameId = nextFrameId++;
        queue.push({ frame: { frameId, body } });
        return frameId;
      },
    };
    streamSink.push({ case: "hello", value: { resumeCursor, clientVersion: options.clientVersion } });
    if (presence.length > 0) {
      streamSink.push({ case: "presenceSubscribe", value: { userIds: presence } });
    }
    sink = streamSink;
    try {
      for await (const response of session.session(queue, { signal })) {
        if (response.frame !== undefined) {
          yield response.frame;
        }
      }
    } finally {
      queue.end();
    }
  }

  async function openOnce(stopSignal: AbortSignal): Promise<Ending> {
    const ending: Ending = { wasReady: false };
    const controller = new AbortController();
    streamController = controller;
    const onStop = () => controller.abort(stopSignal.reason);
    stopSignal.addEventListener("abort", onStop, { once: true });
    let intervalMs = options.heartbeatIntervalMs;
    try {
      await options.beforeOpen(controller.signal);
      streamOpen = true;
      const url = await pickUrl(controller.signal);
      armLiveness(controller, intervalMs);
      for await (const frame of openStream(url, controller.signal)) {
        armLiveness(controller, intervalMs);
        switch (frame.body.case) {
          case "ready": {
            const ready = frame.body.value;
            const interval = ready.heartbeatInterval === undefined ? 0 : durationMs(ready.heartbeatInterval);
            intervalMs = interval > 0 ? interval : options.heartbeatIntervalMs;
            armLiveness(controller, intervalMs);
            ending.wasReady = true;
            streaming = true;
            if (sink !== undefined) {
              armHeartbeat(intervalMs);
            }
            setState("ready");
            options.onReady(ready, sink);
            settleWaiters();
            break;
          }
          case "drain":
            ending.drain = frame.body.value;
            options.onDrain(frame.body.value);
            return ending;
          case "close":
            ending.close = frame.body.value;
            return ending;
          case "heartbeat":
            break;
          default:
            options.onFrame(frame);
        }
      }
      ending.error = new ParleyClientError(
        Code.Unavailable,
        ClientReason.STREAM_ENDED,
        "the stream ended without a Close frame",
        { transportFailure: true },
      );
    } catch (error) {
      const reason: unknown = controller.signal.reason;
      if (controller.signal.aborted && reason === RESTART) {
        ending.restart = true;
      } else {
        ending.error = controller.signal.aborted ? reason : error;
      }
    } finally {
      stopSignal.removeEventListener("abort", onStop);
      controller.abort(RESTART);
      streamController = undefined;
      streamOpen = false;
      clearTimers();
      sink = undefined;
      if (streaming) {
        streaming = false;
        options.onStreamEnd();
      }
    }
    return ending;
  }

  async function decide(ending: Ending, attempt: () => number, refreshedInARow: boolean): Promise<Decision> {
    if (ending.restart) {
      return { delayMs: 0 };
    }
    if (ending.drain !== undefined) {
      drainUrl = ending.drain.reconnectUrl === "" ? undefined : ending.drain.reconnectUrl;
      return { delayMs: 0 };
    }
    if (ending.close !== undefined) {
      const close = ending.close;
      const retryAfterMs = close.retryAfter === undefined ? 0 : durationMs(close.retryAfter);
      const reasonName =
        Object.entries(CloseReason).find(([, value]) => value === close.reason)?.[0] ?? "UNSPECIFIED";
      const error = new ParleyClientError(
        (CLOSE_CODES as Record<number, Code | undefined>)[close.reason] ?? Code.Unavailable,
        close.reason === CloseReason.REPLACED ? ClientReason.SESSION_REPLACED : reasonName,
        close.message || `the edge closed the stream (${reasonName})`,
        { retryDelayMs: retryAfterMs > 0 ? retryAfterMs : undefined },
      );
      switch (close.reason) {
        case CloseReason.REPLACED:
          return { stop: "replaced", error };
        case CloseReason.DEVICE_REVOKED:
          return { stop: "closed", error };
        case CloseReason.TOKEN_EXPIRED:
          return refreshToken(error, retryAfterMs, attempt, refreshedInARow);
        case CloseReason.SHUTDOWN:
          options.transports.resetUrl();
          return { delayMs: Math.max(retryAfterMs, options.backoff.delay(attempt())), error };
        default:
          return { delayMs: Math.max(retryAfterMs, options.backoff.delay(attempt())), error };
      }
    }
    const error = toClientError(ending.error);
    if (error.code === Code.Unauthenticated) {
      return error.reason === "TOKEN_EXPIRED"
        ? refreshToken(error, 0, attempt, refreshedInARow)
        : { stop: "closed", error };
    }
    if (error.code === Code.PermissionDenied) {
      return { stop: "closed", error };
    }
    if (error.code === Code.Aborted && error.reason === "STREAM_REPLACED") {
      // The error a replaced stream ends with, should its Close frame have been lost.
      return { stop: "replaced", error };
    }
    if (error.code === Code.InvalidArgument && error.reason === "INVALID_CURSOR") {
      options.onInvalidCursor();
      return { delayMs: 0, error };
    }
    if (!ending.wasReady) {
      // A host we were sent to (Drain, Locate) that cannot be reached: go back to the configured one.
      options.transports.resetUrl();
    }
    return { delayMs: Math.max(error.retryDelayMs ?? 0, options.backoff.delay(attempt())), error };
  }

  async function refreshToken(
    error: ParleyClientError,
    retryAfterMs: number,
    attempt: () => number,
    refreshedInARow: boolean,
  ): Promise<Decision> {
    if (!options.tokens.refreshable) {
      return { stop: "closed", error };
    }
    try {
      const stale = await options.tokens.get().catch(() => "");
      const fresh = await options.tokens.refresh(stale);
      if (fresh === stale) {
        return { stop: "closed", error };
      }
    } catch (refreshError) {
      return { delayMs: options.backoff.delay(attempt()), error: toClientError(refreshError) };
    }
    // Reconnect at once with the new token, unless the previous new token was refused too.
    return { delayMs: Math.max(retryAfterMs, refreshedInARow ? options.backoff.delay(attempt()) : 0), error };
  }

  async function run(stopSignal: AbortSignal) {
    let attempts = 0;
    let refreshedInARow = false;
    setState("connecting");
    while (!stopSignal.aborted) {
      const ending = await openOnce(stopSignal);
      if (stopSignal.aborted) {
        return;
      }
      if (ending.wasReady) {
        attempts = 0;
        refreshedInARow = false;
      }
      const decision = await decide(ending, () => attempts++, refreshedInARow);
      if (decision.stop !== undefined) {
        setState(decision.stop, { error: decision.error });
        settleWaiters(decision.error);
        return;
      }
      refreshedInARow = decision.error?.reason === "TOKEN_EXPIRED";
      setState("reconnecting", {
        retryInMs: decision.delayMs,
        ...(decision.error === undefined ? {} : { error: decision.error }),
      });
      if (decision.delayMs > 0) {
        try {
          await sleep(options.clock, decision.delayMs, stopSignal);
        } catch {
          return;
        }
      }
    }
  }

  return {
    start() {
      if (state === "ready") {
        return Promise.resolve();
      }
      const ready = new Promise<void>((resolve, reject) => {
        waiters.push({ resolve, reject });
      });
      if (loop === undefined) {
        const controller = new AbortController();
        stopController = controller;
        loop = run(controller.signal).finally(() => {
          loop = undefined;
        });
      }
      return ready;
    },
    async stop(error) {
      stopController?.abort(error);
      await loop;
      setState("closed");
      settleWaiters(error);
    },
    restart() {
      streamController?.abort(RESTART);
    },
    heartbeatNow() {
      heartbeat();
    },
    get state() {
      return state;
    },
    get streaming() {
      return streaming;
    },
    get streamOpen() {
      return streamOpen;
    },
  };
}
