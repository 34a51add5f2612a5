import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { anyPack, durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, Transport } from "@connectrpc/connect";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../../../gen/google/rpc/error_details_pb.ts";
import type { Status } from "../../../gen/google/rpc/status_pb.ts";
import { StatusSchema } from "../../../gen/google/rpc/status_pb.ts";
import { ContentKind } from "../../../gen/parley/common/v1/envelope_pb.ts";
import type { Message } from "../../../gen/parley/common/v1/message_pb.ts";
import { MessageSchema } from "../../../gen/parley/common/v1/message_pb.ts";
import type {
  ClientFrame,
  CloseReason,
  OutgoingMessage,
  ServerFrameSchema,
} from "../../../gen/parley/edge/v1/frames_pb.ts";
import type { ListMessagesRequest, SyncRequest } from "../../../gen/parley/edge/v1/history_service_pb.ts";
import { HistoryService } from "../../../gen/parley/edge/v1/history_service_pb.ts";
import type { AckRequest, SetTypingRequest } from "../../../gen/parley/edge/v1/session_service_pb.ts";
import { SessionService } from "../../../gen/parley/edge/v1/session_service_pb.ts";
import { createAsyncQueue } from "../async-queue.ts";

type FrameInit = MessageInitShape<typeof ServerFrameSchema>;
type Outgoing = { frame: FrameInit } | { error: ConnectError } | { end: true };

/** A refusal the fake edge answers a send with. */
export type ScriptedError = {
  readonly code: Code;
  readonly reason: string;
  readonly message?: string;
  readonly violations?: readonly { field: string; description: string }[];
  readonly retryDelayMs?: number;
};

/** One stream a client opened on the fake edge. */
export type FakeStream = {
  readonly host: string;
  readonly kind: "session" | "subscribe";
  readonly authorization: string;
  readonly resumeCursor: Uint8Array;
  readonly presence: string[];
  readonly frames: ClientFrame[];
  live: boolean;
  /** The cursor of the last message sent on this stream. */
  lastCursor: Uint8Array;
  readonly out: ReturnType<typeof createAsyncQueue<Outgoing>>;
};

export type FakeEdge = {
  /** A transport to one host of the fake edge (every host shares the same data). */
  transport(host?: string): Transport;
  readonly streams: FakeStream[];
  readonly sends: { via: "frame" | "unary"; message: OutgoingMessage; authorization: string }[];
  readonly acks: AckRequest["ack"][];
  readonly typing: SetTypingRequest[];
  readonly listCalls: ListMessagesRequest[];
  readonly syncCalls: SyncRequest[];
  /** Answers for the next sends, in order; once empty, sends are accepted. */
  readonly sendScript: ScriptedError[];
  /** ListMessages fails with UNAVAILABLE this many more times. */
  listFailures: number;
  /** The next this-many Session/Subscribe calls fail with UNAVAILABLE before ServerReady. */
  refuseStreams: number;
  /** Send frames get no SendResult while true (an answer lost with the stream). */
  holdSends: boolean;
  /** Replay the whole inbox on every new stream, whatever the resume cursor (a lagging edge). */
  replayAll: boolean;
  /** Sync returns at most this many items per page. */
  syncPageCap: number;
  /** Authorization headers the edge refuses with UNAUTHENTICATED [TOKEN_EXPIRED]. */
  readonly expiredTokens: Set<string>;
  /** Makes a stored message of a conversation (not in the device's inbox). */
  store(conversationId: string, seq: number, options?: { sender?: string }): Message;
  /** Stores a message, adds it to the device's inbox and pushes it on every live stream. */
  deliver(conversationId: string, seq: number): Message;
  /** Adds a stored message to the inbox (and pushes it to live streams unless `push` is false). */
  addToInbox(message: Message, push?: boolean): Uint8Array;
  /** Pushes a message on the live streams with a cursor, without touching the inbox (a duplicate push). */
  push(message: Message, cursor: Uint8Array): void;
  /** Removes stored messages (retention). */
  expire(conversationId: string, seqs: number[]): void;
  /** Fails every live stream with `code`. */
  failStreams(code?: Code): void;
  /** Sends Drain to the live streams of `host` (with the stream's last cursor unless given), then ends them. */
  drain(host: string, reconnectUrl: string, resumeCursor?: Uint8Array): void;
  /** Sends Close with `reason` to every live stream, then fails it with `code`. */
  close(reason: CloseReason, code: Code, retryAfterMs?: number): void;
  /** Pushes any frame on every live stream. */
  pushFrame(frame: FrameInit): void;
  liveStreams(): FakeStream[];
};

export const DEVICE = { userId: "alice", deviceId: "phone" };

export function cursorOf(index: number): Uint8Array {
  return new TextEncoder().encode(`c${index}`);
}

export function cursorIndex(cursor: Uint8Array): number {
  return cursor.length === 0 ? 0 : Number(new TextDecoder().decode(cursor).slice(1));
}

export function messageIdOf(conversationId: string, seq: number): string {
  const tail = (Number.parseInt(conversationId.slice(-4), 16) * 1_000_000 + seq)
    .toString(16)
    .padStart(12, "0");
  return `01900000-0000-7000-8000-${tail}`;
}

/**
 * An edge that follows the client-facing contract closely enough to drive the SDK in memory:
 * SessionService (Session, Subscribe, Send, Ack, SetTyping) and HistoryService (Sync,
 * ListMessages) over connect's router transport, scripted from the test.
 */
export function createFakeEdge(options: { heartbeatMs?: number } = {}): FakeEdge {
  const conversations = new Map<string, Map<number, Message>>();
  const inbox: { cursor: Uint8Array; message: Message }[] = [];
  const acceptedByClientId = new Map<string, string>();
  const streams: FakeStream[] = [];
  const edge: FakeEdge = {
    transport: (host = "https://edge-a.test") => transports.get(host) ?? makeTransport(host),
    streams,
    sends: [],
    acks: [],
    typing: [],
    listCalls: [],
    syncCalls: [],
    sendScript: [],
    listFailures: 0,
    refuseStreams: 0,
    holdSends: false,
    replayAll: false,
    syncPageCap: 1000,
    expiredTokens: new Set(),
    store(conversationId, seq, storeOptions = {}) {
      let log = conversations.get(conversationId);
      if (log === undefined) {
        log = new Map();
        conversations.set(conversationId, log);
      }
      const message = create(MessageSchema, {
        messageId: messageIdOf(conversationId, seq),
        conversationId,
        seq: BigInt(seq),
        sender: { userId: storeOptions.sender ?? "bob", deviceId: "laptop" },
        clientMessageId: crypto.randomUUID(),
        kind: ContentKind.TEXT,
        ciphertext: new TextEncoder().encode(`ciphertext ${seq}`),
        acceptedAt: timestampFromMs(1_700_000_000_000 + seq),
      });
      log.set(seq, message);
      return message;
    },
    deliver(conversationId, seq) {
      const message = edge.store(conversationId, seq);
      edge.addToInbox(message);
      return message;
    },
    addToInbox(message, push = true) {
      const cursor = cursorOf(inbox.length + 1);
      inbox.push({ cursor, message });
      if (push) {
        edge.push(message, cursor);
      }
      return cursor;
    },
    push(message, cursor) {
      for (const stream of edge.liveStreams()) {
        stream.lastCursor = cursor;
        stream.out.push({ frame: { body: { case: "message", value: { message, cursor } } } });
      }
    },
    expire(conversationId, seqs) {
      for (const seq of seqs) {
        conversations.get(conversationId)?.delete(seq);
      }
    },
    failStreams(code = Code.Unavailable) {
      for (const stream of edge.liveStreams()) {
        stream.live = false;
        stream.out.push({ error: new ConnectError("connection reset", code) });
      }
    },
    drain(host, reconnectUrl, resumeCursor) {
      for (const stream of edge.liveStreams().filter((s) => s.host === host)) {
        stream.live = false;
        stream.out.push({
          frame: {
            body: {
              case: "drain",
              value: {
                reconnectUrl,
                resumeCursor: resumeCursor ?? stream.lastCursor,
                deadline: durationFromMs(10_000),
              },
            },
          },
        });
        stream.out.push({ end: true });
      }
    },
    close(reason, code, retryAfterMs) {
      for (const stream of edge.liveStreams()) {
        stream.live = false;
        stream.out.push({
          frame: {
            body: {
              case: "close",
              value: {
                reason,
                message: "closed by the test",
                ...(retryAfterMs === undefined ? {} : { retryAfter: durationFromMs(retryAfterMs) }),
              },
            },
          },
        });
        stream.out.push({ error: new ConnectError("closed", code) });
      }
    },
    pushFrame(frame) {
      for (const stream of edge.liveStreams()) {
        stream.out.push({ frame });
      }
    },
    liveStreams: () => streams.filter((s) => s.live),
  };

  const transports = new Map<string, Transport>();

  function authorize(ctx: HandlerContext): string {
    const authorization = ctx.requestHeader.get("authorization") ?? "";
    if (edge.expiredTokens.has(authorization)) {
      throw refusal({ code: Code.Unauthenticated, reason: "TOKEN_EXPIRED", message: "token expired" });
    }
    return authorization;
  }

  function refuseStream() {
    if (edge.refuseStreams > 0) {
      edge.refuseStreams -= 1;
      throw refusal({ code: Code.Unavailable, reason: "SERVICE_UNAVAILABLE" });
    }
  }

  function accept(message: OutgoingMessage) {
    const scripted = edge.sendScript.shift();
    if (scripted !== undefined) {
      return { kind: "refused" as const, error: scripted };
    }
    const known = acceptedByClientId.get(message.clientMessageId);
    const messageId =
      known ?? `01900000-0000-7000-9000-${(acceptedByClientId.size + 1).toString(16).padStart(12, "0")}`;
    acceptedByClientId.set(message.clientMessageId, messageId);
    return {
      kind: "accepted" as const,
      accepted: { messageId, acceptedAt: timestampFromMs(1_700_000_000_000), duplicate: known !== undefined },
    };
  }

  function openStream(
    host: string,
    kind: FakeStream["kind"],
    authorization: string,
    resumeCursor: Uint8Array,
    presence: string[],
    ctx: HandlerContext,
  ): FakeStream {
    const stream: FakeStream = {
      host,
      kind,
      authorization,
      resumeCursor,
      presence,
      frames: [],
      live: true,
      lastCursor: resumeCursor,
      out: createAsyncQueue<Outgoing>(),
    };
    streams.push(stream);
    ctx.signal.addEventListener("abort", () => {
      stream.live = false;
      stream.out.end();
    });
    stream.out.push({
      frame: {
        body: {
          case: "ready",
          value: {
            hostId: host,
            heartbeatInterval: durationFromMs(options.heartbeatMs ?? 20_000),
            serverTime: timestampFromMs(1_700_000_000_000),
            device: DEVICE,
          },
        },
      },
    });
    for (const item of inbox.slice(edge.replayAll ? 0 : cursorIndex(resumeCursor))) {
      stream.lastCursor = item.cursor;
      stream.out.push({ frame: { body: { case: "message", value: item } } });
    }
    return stream;
  }

  async function* serve(stream: FakeStream) {
    try {
      for await (const item of stream.out) {
        if ("error" in item) {
          throw item.error;
        }
        if ("end" in item) {
          return;
        }
        yield { frame: item.frame };
      }
    } finally {
      stream.live = false;
    }
  }

  function onClientFrame(stream: FakeStream, frame: ClientFrame) {
    stream.frames.push(frame);
    const body = frame.body;
    if (body.case === "send") {
      edge.sends.push({ via: "frame", message: body.value, authorization: stream.authorization });
      if (edge.holdSends) {
        return;
      }
      const result = accept(body.value);
      stream.out.push({
        frame: {
          body: {
            case: "sendResult",
            value: {
              frameId: frame.frameId,
              clientMessageId: body.value.clientMessageId,
              outcome:
                result.kind === "accepted"
                  ? { case: "accepted", value: result.accepted }
                  : { case: "error", value: statusOf(result.error) },
            },
          },
        },
      });
    } else if (body.case === "ack") {
      edge.acks.push(body.value);
    } else if (body.case === "heartbeat") {
      stream.out.push({ frame: { body: { case: "heartbeat", value: { serverTime: timestampFromMs(0) } } } });
    } else if (body.case === "presenceSubscribe") {
      stream.presence.splice(0, stream.presence.length, ...body.value.userIds);
    }
  }

  function makeTransport(host: string): Transport {
    const transport = createRouterTransport((router) => {
      router.service(SessionService, {
        async *session(requests, ctx) {
          const authorization = authorize(ctx);
          refuseStream();
          const iterator = requests[Symbol.asyncIterator]();
          const first = await iterator.next();
          const frame = first.done ? undefined : first.value.frame;
          const hello = frame?.body.case === "hello" ? frame.body.value : undefined;
          const stream = openStream(
            host,
            "session",
            authorization,
            hello?.resumeCursor ?? new Uint8Array(0),
            [],
            ctx,
          );
          if (frame !== undefined) {
            stream.frames.push(frame);
          }
          void (async () => {
            try {
              for (;;) {
                const next = await iterator.next();
                if (next.done) {
                  return;
                }
                if (next.value.frame !== undefined) {
                  onClientFrame(stream, next.value.frame);
                }
              }
            } catch {
              // the client went away
            }
          })();
          yield* serve(stream);
        },
        async *subscribe(request, ctx) {
          const authorization = authorize(ctx);
          refuseStream();
          const stream = openStream(
            host,
            "subscribe",
            authorization,
            request.resumeCursor,
            [...(request.presence?.userIds ?? [])],
            ctx,
          );
          yield* serve(stream);
        },
        async send(request, ctx) {
          const authorization = authorize(ctx);
          const message = request.message as OutgoingMessage;
          edge.sends.push({ via: "unary", message, authorization });
          const result = accept(message);
          if (result.kind === "refused") {
            throw refusal(result.error);
          }
          return { accepted: result.accepted };
        },
        async ack(request, ctx) {
          authorize(ctx);
          edge.acks.push(request.ack);
          return {};
        },
        async setTyping(request, ctx) {
          authorize(ctx);
          edge.typing.push(request);
          return {};
        },
        async requestResend(_request, ctx) {
          authorize(ctx);
          return {};
        },
        async locate(_request, ctx) {
          authorize(ctx);
          return { edgeUrl: host, hostId: host };
        },
      });
      router.service(HistoryService, {
        async sync(request, ctx) {
          authorize(ctx);
          edge.syncCalls.push(request);
          const start = cursorIndex(request.cursor);
          const size = Math.min(request.pageSize || 100, edge.syncPageCap);
          const items = inbox.slice(start, start + size);
          const touched = new Set(items.map((item) => item.message.conversationId));
          return {
            items: items.map((item) => ({
              cursor: item.cursor,
              item: { case: "message", value: item.message },
            })),
            nextCursor: items.at(-1)?.cursor ?? request.cursor,
            more: start + size < inbox.length,
            watermarks: [...touched].map((conversationId) => ({
              conversationId,
              lastSeq: BigInt(Math.max(0, ...(conversations.get(conversationId)?.keys() ?? []))),
            })),
          };
        },
        async listMessages(request, ctx) {
          authorize(ctx);
          edge.listCalls.push(request);
          if (edge.listFailures > 0) {
            edge.listFailures -= 1;
            throw refusal({ code: Code.Unavailable, reason: "SERVICE_UNAVAILABLE" });
          }
          const log = conversations.get(request.conversationId);
          if (log === undefined) {
            throw refusal({ code: Code.NotFound, reason: "CONVERSATION_NOT_FOUND" });
          }
          const offset = request.pageToken === "" ? 0 : Number(request.pageToken);
          const size = request.pageSize || 50;
          const matching = [...log.values()]
            .filter(
              (m) => m.seq > request.afterSeq && (request.beforeSeq === 0n || m.seq < request.beforeSeq),
            )
            .sort((a, b) => Number(a.seq - b.seq));
          const page = matching.slice(offset, offset + size);
          return {
            messages: page,
            nextPageToken: offset + size < matching.length ? String(offset + size) : "",
            lastSeq: BigInt(Math.max(0, ...log.keys())),
          };
        },
        async getReceipts() {
          return {};
        },
      });
    });
    transports.set(host, transport);
    return transport;
  }

  return edge;
}

/** A ConnectError with the details the real edge attaches (ErrorInfo, BadRequest, RetryInfo). */
export function refusal(error: ScriptedError): ConnectError {
  const details = detailsOf(error);
  return new ConnectError(error.message ?? error.reason.toLowerCase(), error.code, undefined, [
    { desc: ErrorInfoSchema, value: details.info },
    ...(details.badRequest === undefined ? [] : [{ desc: BadRequestSchema, value: details.badRequest }]),
    ...(details.retry === undefined ? [] : [{ desc: RetryInfoSchema, value: details.retry }]),
  ]);
}

function detailsOf(error: ScriptedError) {
  return {
    info: create(ErrorInfoSchema, { reason: error.reason, domain: "parley.dev" }),
    badRequest:
      error.violations === undefined
        ? undefined
        : create(BadRequestSchema, { fieldViolations: error.violations.map((v) => ({ ...v })) }),
    retry:
      error.retryDelayMs === undefined
        ? undefined
        : create(RetryInfoSchema, { retryDelay: durationFromMs(error.retryDelayMs) }),
  };
}

/** The same refusal as the google.rpc.Status a SendResult carries. */
function statusOf(error: ScriptedError): Status {
  const details = detailsOf(error);
  return create(StatusSchema, {
    code: error.code,
    message: error.message ?? error.reason.toLowerCase(),
    details: [
      anyPack(ErrorInfoSchema, details.info),
      ...(details.badRequest === undefined ? [] : [anyPack(BadRequestSchema, details.badRequest)]),
      ...(details.retry === undefined ? [] : [anyPack(RetryInfoSchema, details.retry)]),
    ],
  });
}
