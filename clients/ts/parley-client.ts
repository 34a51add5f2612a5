import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Client, Transport } from "@connectrpc/connect";
import { Code, createClient } from "@connectrpc/connect";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import type { EnvelopeSchema } from "../../gen/parley/common/v1/envelope_pb.ts";
import type { Receipt } from "../../gen/parley/common/v1/message_pb.ts";
import { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import { ContactService } from "../../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../../gen/parley/edge/v1/conversation_service_pb.ts";
import { DeviceService } from "../../gen/parley/edge/v1/device_service_pb.ts";
import type {
  ContactEvent,
  ConversationEvent,
  KeyChangedEvent,
  PrekeysLowEvent,
  PresenceEvent,
  ResendRequestEvent,
  ServerFrame,
  TypingEvent,
} from "../../gen/parley/edge/v1/frames_pb.ts";
import { HistoryService } from "../../gen/parley/edge/v1/history_service_pb.ts";
import { SessionService } from "../../gen/parley/edge/v1/session_service_pb.ts";
import type { BackoffOptions } from "./backoff.ts";
import { createBackoff } from "./backoff.ts";
import { ClientReason, ParleyClientError, toClientError } from "./client-error.ts";
import type { ClientStateStore } from "./client-state.ts";
import { createMemoryStateStore, EMPTY_CLIENT_STATE } from "./client-state.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { ConnectionState, StateChange } from "./connection.ts";
import { createConnection } from "./connection.ts";
import type { CursorLog } from "./cursor-log.ts";
import { createCursorLog } from "./cursor-log.ts";
import type { TransportFactory } from "./edge-transport.ts";
import { createEdgeTransports } from "./edge-transport.ts";
import type { Listener } from "./event-emitter.ts";
import { createEventEmitter } from "./event-emitter.ts";
import type { FrameOutbound, FrameSink } from "./frame-outbound.ts";
import { createFrameOutbound } from "./frame-outbound.ts";
import { createGapFiller } from "./gap-filler.ts";
import { syncPages } from "./history-sync.ts";
import type { GapEvent, InboundPipeline, IncomingMessage } from "./inbound-pipeline.ts";
import { createInboundPipeline } from "./inbound-pipeline.ts";
import { CLIENT_MESSAGE_MAX_BYTES, sendFrameBytes } from "./message-size.ts";
import type { AckTarget, Outbound, ResendRequestInit, SendOutcome } from "./outbound.ts";
import { createStateSaver } from "./state-saver.ts";
import type { TokenProvider } from "./token-source.ts";
import { createTokenSource } from "./token-source.ts";
import { createUnaryOutbound } from "./unary-outbound.ts";

export const CLIENT_VERSION = "parley-ts/0.1.0";

export type ParleyClientOptions = {
  /**
   * The edge: a function from a base URL to a Transport (so a Drain can move the stream to another
   * host), with `baseUrl`; or one fixed Transport. Use connect-web's `createConnectTransport` in
   * browsers, connect-node's in Node. The SDK adds the Authorization header itself.
   */
  readonly transport: Transport | TransportFactory;
  /** The edge's base URL (required with a transport factory). */
  readonly baseUrl?: string;
  /** The device-bound JWT, or a function returning a fresh one (called again when the edge says it expired). */
  readonly token: TokenProvider;
  /** Where the resume cursor and dedup watermarks live between runs. Default: memory only. */
  readonly store?: ClientStateStore;
  /** `bidi` (default): the Session stream. `browser`: Subscribe plus unary Send/Ack/SetTyping. */
  readonly mode?: "bidi" | "browser";
  /** Ask SessionService.Locate on `baseUrl` which edge host to open the stream on. Default false. */
  readonly locate?: boolean;
  /** Reconnect and retry backoff (full jitter). Default base 500 ms, max 30 s. */
  readonly backoff?: BackoffOptions;
  /** Heartbeat interval until the edge states its own in ServerReady. Default 30 s. */
  readonly heartbeatIntervalMs?: number;
  /** Acknowledge DELIVERED up to each conversation's handled watermark after the handlers return. Default true. */
  readonly autoAck?: boolean;
  /** Tries per send, the first included, before the last error is returned. Default 8. */
  readonly sendMaxAttempts?: number;
  /** How many handled message ids the dedup cache remembers (beside the per-conversation seq watermarks). Default 10,000. */
  readonly dedupCacheSize?: number;
  /**
   * Drop messages already handed to `onMessage` (by id and per-conversation watermark). Default
   * true. FOR FAULT TESTS ONLY: `false` hands every copy the edge delivers (replays, resends) to
   * the app again, so a control run can show what dedup hides (test/fault). Never turn it off in
   * an app: it breaks "exactly once".
   */
  readonly dedup?: boolean;
  /** Sent in ClientHello / SubscribeRequest. Default "parley-ts/0.1.0". */
  readonly clientVersion?: string;
  /** For tests: time and randomness. */
  readonly clock?: Clock;
  readonly random?: () => number;
};

/** Where an error surfaced through `onError` came from. */
export type ErrorOperation =
  | "connection"
  | "handler"
  | "listener"
  | "frame"
  | "auto-ack"
  | "save-state"
  | "internal";

export type ErrorEvent = {
  readonly error: ParleyClientError;
  readonly operation: ErrorOperation;
  /** For `frame`: the kind of frame the edge refused (ack, typing, presenceSubscribe, resendRequest...). */
  readonly frameKind?: string;
  /** For `handler`: the message the handler failed on, and how many times it has failed in a row. */
  readonly messageId?: string;
  readonly conversationId?: string;
  readonly attempt?: number;
};

export type ParleyClientEvents = {
  message: IncomingMessage;
  receipt: Receipt;
  typing: TypingEvent;
  presence: PresenceEvent;
  keyChanged: KeyChangedEvent;
  prekeysLow: PrekeysLowEvent;
  contact: ContactEvent;
  conversation: ConversationEvent;
  resendRequest: ResendRequestEvent;
  stateChange: StateChange;
  gap: GapEvent;
  error: ErrorEvent;
};

export type SendInput = {
  readonly conversationId: string;
  readonly envelope: MessageInitShape<typeof EnvelopeSchema>;
  /** The idempotency key; a UUIDv4 is generated when absent. Reuse it to retry a send yourself. */
  readonly clientMessageId?: string;
  readonly forceTrace?: boolean;
  /** Gives up waiting (for a stream, or between retries). */
  readonly signal?: AbortSignal;
};

export type SyncSummary = { readonly messages: number; readonly receipts: number; readonly pages: number };

export type ParleyClient = {
  /** Loads the state, catches up (Sync when there is no cursor yet) and opens the stream; resolves once ready. */
  connect(): Promise<void>;
  /** Closes the stream, rejects pending sends, saves the state. Final. */
  close(): Promise<void>;
  readonly state: ConnectionState;
  /** The authenticated device, once a stream was ready. */
  readonly device: DeviceAddress | undefined;

  send(input: SendInput): Promise<SendOutcome>;
  markDelivered(conversationId: string, target: AckTarget): Promise<void>;
  markRead(conversationId: string, target: AckTarget): Promise<void>;
  setTyping(conversationId: string, typing: boolean): Promise<void>;
  /** Follows these users' presence (replaces the previous list; kept across reconnects). */
  subscribePresence(userIds: readonly string[]): Promise<void>;
  /** Whether the user is idle (reported in heartbeats: idle devices count as away). */
  setIdle(idle: boolean): void;
  requestResend(request: ResendRequestInit): Promise<void>;
  /** Pages HistoryService.Sync from the stored cursor (following `more`), fills reported gaps, and resolves once handled. */
  sync(): Promise<SyncSummary>;

  onMessage(listener: Listener<IncomingMessage>): () => void;
  onReceipt(listener: Listener<Receipt>): () => void;
  onTyping(listener: Listener<TypingEvent>): () => void;
  onPresence(listener: Listener<PresenceEvent>): () => void;
  onKeyChanged(listener: Listener<KeyChangedEvent>): () => void;
  onPrekeysLow(listener: Listener<PrekeysLowEvent>): () => void;
  onContact(listener: Listener<ContactEvent>): () => void;
  onConversation(listener: Listener<ConversationEvent>): () => void;
  onResendRequest(listener: Listener<ResendRequestEvent>): () => void;
  onStateChange(listener: Listener<StateChange>): () => void;
  onGap(listener: Listener<GapEvent>): () => void;
  onError(listener: Listener<ErrorEvent>): () => void;

  /** Typed clients on the same transport and token. */
  readonly contacts: Client<typeof ContactService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly devices: Client<typeof DeviceService>;
  readonly history: Client<typeof HistoryService>;
};

type Core = { readonly cursors: CursorLog; readonly pipeline: InboundPipeline };

const SYNC_ATTEMPTS = 5;
/**
 * Tries of one gap fetch before later messages are shown out of order: with the backoff this waits
 * several seconds for a busy history (a big group's burst) rather than giving up order at once.
 */
const FILL_ATTEMPTS = 5;

/**
 * The Parley client for one device. Messages reach `onMessage` exactly once each and in seq order
 * per conversation, whether the edge pushed, replayed or synced them (see InboundPipeline); the
 * stored cursor only moves past messages whose handlers returned, so a crash replays, never loses.
 * Register listeners before `connect()`.
 */
export function createParleyClient(options: ParleyClientOptions): ParleyClient {
  const clock = options.clock ?? systemClock;
  const backoff = createBackoff(options.backoff, options.random ?? Math.random);
  const tokens = createTokenSource(options.token);
  const transports = createEdgeTransports(options.transport, options.baseUrl, tokens);
  const mode = options.mode ?? "bidi";
  const store = options.store ?? createMemoryStateStore();
  const autoAck = options.autoAck ?? true;
  const maxAttempts = options.sendMaxAttempts ?? 8;
  const lifetime = new AbortController();
  const closedError = new ParleyClientError(
    Code.Canceled,
    ClientReason.CLIENT_CLOSED,
    "the client was closed",
  );

  const emitter = createEventEmitter<ParleyClientEvents>((error, event) => {
    if (event !== "error") {
      emitter.emit("error", { error: wrapError(error, ClientReason.HANDLER_FAILED), operation: "listener" });
    }
  });
  const reportError = (event: ErrorEvent) => emitter.emit("error", event);

  const session = createClient(SessionService, transports.current);
  const history = createClient(HistoryService, transports.current);
  const frames: FrameOutbound | undefined =
    mode === "bidi" ? createFrameOutbound({ clock, backoff, maxAttempts }) : undefined;
  const outbound: Outbound = frames ?? createUnaryOutbound(session, { clock, backoff, maxAttempts });
  const fill = createGapFiller(history, { attempts: FILL_ATTEMPTS, backoff, clock, signal: lifetime.signal });

  let core: Core | undefined;
  let loading: Promise<Core> | undefined;
  let closed = false;
  let device: DeviceAddress | undefined;
  let presence: readonly string[] = [];
  let idle = false;
  let syncing: Promise<SyncSummary> | undefined;
  const ackDue = new Map<string, boolean>();
  const acked = new Map<string, bigint>();

  const saver = createStateSaver(
    store,
    () =>
      core === undefined
        ? EMPTY_CLIENT_STATE
        : { cursor: core.cursors.committed(), conversations: core.pipeline.snapshot() },
    (error) =>
      reportError({ error: wrapError(error, ClientReason.STATE_SAVE_FAILED), operation: "save-state" }),
  );

  const load = (): Promise<Core> => {
    loading ??= (async () => {
      const state = (await store.get()) ?? EMPTY_CLIENT_STATE;
      const cursors = createCursorLog(state.cursor, () => saver.schedule());
      const pipeline = createInboundPipeline({
        conversations: state.conversations,
        handle: (incoming) => emitter.emitAsync("message", incoming),
        fill,
        complete: (entry) => cursors.complete(entry),
        onHandled: (conversationId, duplicate) => {
          if (autoAck) {
            ackDue.set(conversationId, (ackDue.get(conversationId) ?? false) || duplicate);
          }
        },
        onSettled: flushAcks,
        onGap: (gap) => emitter.emit("gap", gap),
        onHandlerError: (error, message, attempt) =>
          reportError({
            error: wrapError(error, ClientReason.HANDLER_FAILED),
            operation: "handler",
            messageId: message.messageId,
            conversationId: message.conversationId,
            attempt,
          }),
        onInternalError: (error) =>
          reportError({ error: wrapError(error, "INTERNAL"), operation: "internal" }),
        onChange: () => saver.schedule(),
        clock,
        backoff,
        dedupCacheSize: options.dedupCacheSize ?? 10_000,
        ...(options.dedup === false ? { dedup: false } : {}),
      });
      core = { cursors, pipeline };
      return core;
    })();
    return loading;
  };

  /** Acknowledges DELIVERED up to each touched conversation's watermark, once the pipeline has caught up. */
  function flushAcks() {
    if (closed || core === undefined) {
      return;
    }
    for (const [conversationId, duplicate] of ackDue) {
      const upToSeq = core.pipeline.watermark(conversationId);
      // A duplicate from the inbox means the edge has not recorded our ack: send it again.
      if (
        upToSeq === undefined ||
        upToSeq === 0n ||
        (!duplicate && (acked.get(conversationId) ?? 0n) >= upToSeq)
      ) {
        continue;
      }
      acked.set(conversationId, upToSeq);
      outbound.ack(conversationId, ReceiptKind.DELIVERED, { upToSeq }).catch((error: unknown) => {
        if (!closed) {
          reportError({ error: toClientError(error), operation: "auto-ack", conversationId });
        }
      });
    }
    ackDue.clear();
  }

  async function runSync(owner: boolean, signal: AbortSignal): Promise<SyncSummary> {
    const { cursors, pipeline } = await load();
    let messages = 0;
    let receipts = 0;
    const page = (from: Uint8Array) =>
      syncPages(history, from, { attempts: SYNC_ATTEMPTS, backoff, clock, signal }, (response) => {
        for (const item of response.items) {
          if (item.item.case === "message") {
            messages += 1;
            const entry = owner && item.cursor.length > 0 ? cursors.track(item.cursor) : undefined;
            pipeline.accept(item.item.value, "sync", entry);
          } else if (item.item.case === "receipt") {
            receipts += 1;
            emitter.emit("receipt", item.item.value);
          }
        }
      });
    // The stream owns the cursor while it is open: a sync then only surfaces what it finds.
    const start = owner ? cursors.latest() : cursors.committed();
    let result: Awaited<ReturnType<typeof syncPages>>;
    try {
      result = await page(start);
    } catch (thrown) {
      const error = toClientError(thrown);
      if (error.code !== Code.InvalidArgument || error.reason !== "INVALID_CURSOR" || start.length === 0) {
        throw error;
      }
      // A cursor the server no longer accepts: start over from everything not yet acknowledged.
      if (owner) {
        cursors.reset(new Uint8Array(0));
      }
      result = await page(new Uint8Array(0));
    }
    // Where the inbox ended: resuming from it later misses nothing stored after this sync (an
    // empty cursor would mean "live only"). It commits only behind the items still being handled.
    if (owner && result.cursor.length > 0) cursors.mark(result.cursor);
    for (const [conversationId, lastSeq] of result.watermarks) {
      pipeline.raiseKnownSeq(conversationId, lastSeq);
    }
    pipeline.retryGaps();
    return { messages, receipts, pages: result.pages };
  }

  const startSync = (owner: boolean, signal: AbortSignal) => {
    const running = runSync(owner, signal).finally(() => {
      if (syncing === running) {
        syncing = undefined;
      }
    });
    syncing = running;
    return running;
  };

  const connection = createConnection({
    mode,
    transports,
    tokens,
    clock,
    backoff,
    locate: options.locate ?? false,
    heartbeatIntervalMs: options.heartbeatIntervalMs ?? 30_000,
    clientVersion: options.clientVersion ?? CLIENT_VERSION,
    resumeCursor: () => core?.cursors.latest() ?? new Uint8Array(0),
    presence: () => presence,
    idle: () => idle,
    async beforeOpen(signal) {
      if (syncing !== undefined) {
        await syncing.catch(() => {});
      }
      const { cursors } = await load();
      // No cursor: "live only" would skip what arrived while the device was away, so sync first.
      if (cursors.latest().length === 0) {
        await startSync(true, signal);
      }
    },
    onReady(ready, sink: FrameSink | undefined) {
      device = ready.device;
      if (frames !== undefined && sink !== undefined) {
        frames.attach(sink);
      }
      core?.pipeline.retryGaps();
    },
    onFrame: dispatch,
    onDrain(drain) {
      if (drain.resumeCursor.length > 0) {
        core?.cursors.mark(drain.resumeCursor);
      }
    },
    onStreamEnd() {
      frames?.detach();
    },
    onInvalidCursor() {
      core?.cursors.reset(new Uint8Array(0));
    },
    onStateChange(change) {
      if ((change.state === "replaced" || change.state === "closed") && !closed) {
        outbound.failAll(change.error ?? closedError);
        if (change.error !== undefined && change.state === "closed") {
          reportError({ error: change.error, operation: "connection" });
        }
      }
      emitter.emit("stateChange", change);
    },
  });

  function dispatch(frame: ServerFrame) {
    const body = frame.body;
    switch (body.case) {
      case "message": {
        const { message, cursor } = body.value;
        if (message !== undefined && core !== undefined) {
          core.pipeline.accept(message, "stream", cursor.length > 0 ? core.cursors.track(cursor) : undefined);
        }
        return;
      }
      case "receipt":
        return emitter.emit("receipt", body.value);
      case "presence":
        return emitter.emit("presence", body.value);
      case "typing":
        return emitter.emit("typing", body.value);
      case "keyChanged":
        return emitter.emit("keyChanged", body.value);
      case "prekeysLow":
        return emitter.emit("prekeysLow", body.value);
      case "contact":
        return emitter.emit("contact", body.value);
      case "conversation":
        return emitter.emit("conversation", body.value);
      case "resendRequest":
        return emitter.emit("resendRequest", body.value);
      case "sendResult":
        return frames?.onSendResult(body.value);
      case "frameError": {
        const refused = frames?.onFrameError(body.value);
        if (refused !== undefined) {
          reportError({ error: refused.error, operation: "frame", frameKind: refused.frameKind });
        }
        return;
      }
      default:
        return;
    }
  }

  const ensureOpen = () => {
    if (closed) {
      throw closedError;
    }
  };

  const ack = async (conversationId: string, kind: ReceiptKind, target: AckTarget) => {
    ensureOpen();
    if ("upToSeq" in target && kind === ReceiptKind.DELIVERED) {
      acked.set(
        conversationId,
        target.upToSeq > (acked.get(conversationId) ?? 0n)
          ? target.upToSeq
          : (acked.get(conversationId) ?? 0n),
      );
    }
    await outbound.ack(conversationId, kind, target);
  };

  return {
    async connect() {
      ensureOpen();
      await load();
      await connection.start();
    },
    async close() {
      if (closed) {
        return;
      }
      closed = true;
      lifetime.abort(closedError);
      await connection.stop(closedError);
      outbound.failAll(closedError);
      core?.pipeline.stop();
      await saver.flush();
    },
    get state() {
      return connection.state;
    },
    get device() {
      return device;
    },
    async send(input) {
      ensureOpen();
      if (mode === "bidi" && (connection.state === "replaced" || connection.state === "closed")) {
        throw new ParleyClientError(
          Code.FailedPrecondition,
          connection.state === "replaced" ? ClientReason.SESSION_REPLACED : ClientReason.CLIENT_CLOSED,
          `cannot send while the session is ${connection.state}; call connect() first`,
        );
      }
      const message = {
        conversationId: input.conversationId,
        clientMessageId: input.clientMessageId ?? crypto.randomUUID(),
        envelope: input.envelope,
        forceTrace: input.forceTrace ?? false,
      };
      // Refused here rather than by the edge, which would close the stream on it, and the send,
      // kept for the next stream, would close that one too.
      const bytes = sendFrameBytes(message);
      if (bytes > CLIENT_MESSAGE_MAX_BYTES) {
        throw new ParleyClientError(
          Code.ResourceExhausted,
          ClientReason.MESSAGE_TOO_LARGE,
          `this message takes ${bytes} bytes encoded, over the edge's limit of ${CLIENT_MESSAGE_MAX_BYTES} (4 MiB); it was not sent: pairwise payloads to 5,000 devices fit at about 780 bytes each`,
        );
      }
      try {
        return await outbound.send(message, input.signal);
      } catch (error) {
        throw error instanceof ParleyClientError || input.signal?.aborted ? error : toClientError(error);
      }
    },
    markDelivered: (conversationId, target) => ack(conversationId, ReceiptKind.DELIVERED, target),
    markRead: (conversationId, target) => ack(conversationId, ReceiptKind.READ, target),
    async setTyping(conversationId, typing) {
      ensureOpen();
      await outbound.typing(conversationId, typing);
    },
    async subscribePresence(userIds) {
      ensureOpen();
      presence = [...userIds];
      if (frames !== undefined) {
        frames.presence(presence);
      } else if (connection.streamOpen) {
        connection.restart(); // Subscribe carries the list in its request: reopen, resuming from the cursor
      }
    },
    setIdle(value) {
      idle = value;
      if (connection.streaming) {
        connection.heartbeatNow();
      }
    },
    async requestResend(request) {
      ensureOpen();
      await outbound.requestResend(request);
    },
    async sync() {
      ensureOpen();
      const { pipeline } = await load();
      const summary = await (syncing ?? startSync(!connection.streamOpen, lifetime.signal));
      await pipeline.settled();
      return summary;
    },
    onMessage: (listener) => emitter.on("message", listener),
    onReceipt: (listener) => emitter.on("receipt", listener),
    onTyping: (listener) => emitter.on("typing", listener),
    onPresence: (listener) => emitter.on("presence", listener),
    onKeyChanged: (listener) => emitter.on("keyChanged", listener),
    onPrekeysLow: (listener) => emitter.on("prekeysLow", listener),
    onContact: (listener) => emitter.on("contact", listener),
    onConversation: (listener) => emitter.on("conversation", listener),
    onResendRequest: (listener) => emitter.on("resendRequest", listener),
    onStateChange: (listener) => emitter.on("stateChange", listener),
    onGap: (listener) => emitter.on("gap", listener),
    onError: (listener) => emitter.on("error", listener),
    contacts: createClient(ContactService, transports.current),
    conversations: createClient(ConversationService, transports.current),
    devices: createClient(DeviceService, transports.current),
    history,
  };
}

/** An app error (a throwing handler, a failing store) as a ParleyClientError that keeps it as `cause`. */
function wrapError(error: unknown, reason: string): ParleyClientError {
  if (error instanceof ParleyClientError) {
    return error;
  }
  const message = error instanceof Error ? error.message : String(error);
  return new ParleyClientError(Code.Unknown, reason, message, { cause: error });
}
