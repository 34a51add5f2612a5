import type { DescMethod, MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Attributes, Link, Span } from "@opentelemetry/api";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Status } from "../gen/google/rpc/status_pb.ts";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import { ReceiptKind } from "../gen/parley/common/v1/message_pb.ts";
import { DeliveryService } from "../gen/parley/delivery/v1/delivery_service_pb.ts";
import type {
  Acknowledgement,
  OutgoingMessage,
  ResendRequest,
  SendAcceptedSchema,
  ServerFrame,
  TypingUpdate,
} from "../gen/parley/edge/v1/frames_pb.ts";
import type { SessionRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionRequestSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import type { SendMessageResponse } from "../gen/parley/sender/v1/sender_service_pb.ts";
import { SenderService } from "../gen/parley/sender/v1/sender_service_pb.ts";
import {
  invalidArgument,
  isUnexpectedError,
  parleyErrorFromStatus,
  permissionDenied,
  toParleyError,
  toStatus,
} from "../lib/errors.ts";
import type { GrpcCallOptions } from "../lib/grpc/client.ts";
import { validateMessage } from "../lib/grpc/validation.ts";
import type { Logger } from "../lib/logging.ts";
import { FORCE_TRACE_ATTRIBUTE } from "../lib/telemetry.ts";
import { createAcknowledgementBatcher, recordAlone, toAcknowledgement } from "./ack-batcher.ts";
import { authenticatedCaller, callingDevice } from "./auth/interceptor.ts";
import { FrameTooLargeError } from "./client-frames.ts";
import { serveFrames } from "./frame-writer.ts";
import type { HostDirectory } from "./host-directory.ts";
import type { InternalClients } from "./internal-clients.ts";
import { oversizedFrameBytes } from "./message-size.ts";
import type { StreamMetrics } from "./metrics.ts";
import { noStreamMetrics } from "./metrics.ts";
import type { PassthroughRoute } from "./passthrough.ts";
import { toEdgeError } from "./passthrough.ts";
import type { DeviceStream, FetchPage } from "./streams/device-stream.ts";
import { Closes, durationOf, frame, messageTooLargeClose } from "./streams/device-stream.ts";
import type { PushedMessages } from "./streams/pushed-messages.ts";
import type { StreamHub } from "./streams/stream-hub.ts";
import type { NodeResponse } from "./transport-scope.ts";
import { currentResponse, currentTransportAbort } from "./transport-scope.ts";

export interface SessionServiceOptions {
  readonly hub: StreamHub;
  readonly clients: Pick<InternalClients, "sender" | "history" | "delivery">;
  readonly directory: HostDirectory;
  readonly hostId: () => string;
  readonly heartbeatIntervalMs: number;
  /**
   * How long a new Session holds live pushes for a first frame: a hello with a resume cursor must
   * be replayed before anything live. Any other first frame (or none within this time) goes live.
   */
  readonly helloWaitMs: number;
  readonly logger: Logger;
  /**
   * The messages pushed here (edge/streams/pushed-messages.ts): acks link to their traces and
   * measure their latency from acceptance.
   */
  readonly pushed?: PushedMessages;
  /** Where ack latencies go (edge/metrics.ts). Default: nowhere. */
  readonly metrics?: StreamMetrics;
}

/** Client frames of one Session handled at once; reading pauses beyond it (HTTP/2 flow control). */
const MAX_FRAMES_IN_FLIGHT = 64;

/** The internal call behind each edge method, for the shared error mapping (`toEdgeError`). */
const ROUTES = {
  send: route(SessionService.method.send, SenderService.method.sendMessage, "sender"),
  markDelivered: route(SessionService.method.ack, HistoryService.method.markDelivered, "device"),
  markRead: route(SessionService.method.ack, HistoryService.method.markRead, "device"),
  setTyping: route(SessionService.method.setTyping, DeliveryService.method.setTyping, "device"),
  requestResend: route(SessionService.method.requestResend, HistoryService.method.requestResend, "device"),
  syncSession: route(SessionService.method.session, HistoryService.method.sync, "device"),
  syncSubscribe: route(SessionService.method.subscribe, HistoryService.method.sync, "device"),
} as const;

function route(edge: DescMethod, internal: DescMethod, localName: string): PassthroughRoute {
  return { edge, internal, caller: { kind: "device", localName } };
}

/**
 * SessionService: the device streams (Session, Subscribe) on the stream hub, and the unary calls
 * (Send, Ack, SetTyping, RequestResend) that make the same internal calls as the frames, with
 * errors through the same mapping as the passthroughs.
 */
export function createSessionService(options: SessionServiceOptions): ServiceImpl<typeof SessionService> {
  const { hub, clients, logger } = options;
  const calls = createSessionCalls(clients);
  const acknowledge = createAcknowledge(options.pushed, options.metrics ?? noStreamMetrics);

  const statusOf = (err: unknown, ctx: HandlerContext, via: PassthroughRoute): Status => {
    const mapped = toEdgeError(err, ctx, via, logger);
    if (isUnexpectedError(mapped)) {
      logger.error(
        { rpc: `${via.internal.parent.typeName}/${via.internal.name}`, err: mapped },
        "frame failed",
      );
    }
    return toStatus(toParleyError(mapped));
  };

  const readyFrame = (device: DeviceAddress): ServerFrame =>
    frame({
      case: "ready",
      value: {
        hostId: options.hostId(),
        heartbeatInterval: durationOf(options.heartbeatIntervalMs),
        serverTime: timestampNow(),
        device: { userId: device.userId, deviceId: device.deviceId },
      },
    });

  const fetchPage =
    (device: DeviceAddress, ctx: HandlerContext): FetchPage =>
    (cursor, pageSize, fromOldestUnacknowledged) =>
      clients.history.sync({ device, cursor, pageSize, fromOldestUnacknowledged }, { signal: ctx.signal });

  /**
   * Writes the stream's frames until it ends (frame-writer.ts: straight to the response, a batch
   * per write); a client that goes away aborts it.
   */
  async function* serve(
    stream: DeviceStream,
    ctx: HandlerContext,
    response: NodeResponse | undefined,
  ): AsyncGenerator<{ frame: ServerFrame }, void, undefined> {
    const onAbort = () => stream.abort();
    // The client may have gone while the stream registered.
    if (ctx.signal.aborted) stream.abort();
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    try {
      yield* serveFrames(stream.batches(), ctx, response, onAbort);
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
    }
  }

  const open = async (ctx: HandlerContext, kind: "session" | "subscribe") => {
    const caller = authenticatedCaller(ctx);
    if (caller.registration === "unregistered") {
      // Unary calls (RegisterDevice above all) work for such a device; a stream needs keys.
      throw permissionDenied(
        "DEVICE_NOT_REGISTERED",
        `device ${caller.device.deviceId} is not registered for user ${caller.device.userId}: register it (DeviceService.RegisterDevice) before opening its stream`,
        { metadata: { userId: caller.device.userId, deviceId: caller.device.deviceId } },
      );
    }
    const abortTransport = currentTransportAbort();
    const response = currentResponse();
    const stream = await hub.open(caller.device, kind, {
      expiresAt: caller.expiresAt,
      tokenIssuedAt: caller.issuedAt,
      ...(abortTransport === undefined ? {} : { abortTransport }),
    });
    stream.reply(readyFrame(caller.device));
    return { stream, device: caller.device, response };
  };

  return {
    async *session(requests, ctx) {
      const { stream, device, response } = await open(ctx, "session");
      const reader = createFrameReader({
        stream,
        device,
        ctx,
        hub,
        calls,
        statusOf,
        acknowledge,
        fetchPage: fetchPage(device, ctx),
        helloWaitMs: options.helloWaitMs,
      });
      // Straight from the HTTP/2 request when direct-session.ts serves the call, else Connect's.
      void reader(requests);
      yield* serve(stream, ctx, response);
    },

    async *subscribe(request, ctx) {
      const { stream, device, response } = await open(ctx, "subscribe");
      stream.setPresenceInterest(request.presence?.userIds ?? []);
      if (request.resumeCursor.length > 0) {
        stream
          .resume(request.resumeCursor, fetchPage(device, ctx))
          .catch((err: unknown) =>
            stream.fail(toParleyError(toEdgeError(err, ctx, ROUTES.syncSubscribe, logger))),
          );
      } else {
        stream.goLive();
      }
      yield* serve(stream, ctx, response);
    },

    async send(request, ctx) {
      const message = required(request.message, "message");
      const span = trace.getActiveSpan();
      span?.setAttributes(sendAttributes(callingDevice(ctx), message));
      try {
        const response = await calls.send(callingDevice(ctx), message, unaryOptions(ctx));
        span?.setAttribute("parley.message_id", response.messageId);
        return { accepted: accepted(response) };
      } catch (err) {
        throw toEdgeError(err, ctx, ROUTES.send, logger);
      }
    },

    async ack(request, ctx) {
      const ack = required(request.ack, "ack");
      const span = trace.getActiveSpan();
      span?.setAttributes(ackAttributes(callingDevice(ctx), ack));
      span?.addLinks(acknowledge(callingDevice(ctx), ack));
      try {
        return { acknowledgedUpToSeq: await calls.ack(callingDevice(ctx), ack, unaryOptions(ctx)) };
      } catch (err) {
        throw toEdgeError(err, ctx, ackRoute(ack), logger);
      }
    },

    async setTyping(request, ctx) {
      const typing = required(request.typing, "typing");
      try {
        const expiresAt = await calls.setTyping(callingDevice(ctx), typing, unaryOptions(ctx));
        return expiresAt === undefined ? {} : { expiresAt };
      } catch (err) {
        throw toEdgeError(err, ctx, ROUTES.setTyping, logger);
      }
    },

    async requestResend(request, ctx) {
      const resend = required(request.request, "request");
      try {
        await calls.requestResend(callingDevice(ctx), resend, unaryOptions(ctx));
        return {};
      } catch (err) {
        throw toEdgeError(err, ctx, ROUTES.requestResend, logger);
      }
    },

    async locate(_request, ctx) {
      const host = await options.directory.locate(callingDevice(ctx));
      return { edgeUrl: host.publicUrl, hostId: host.hostId };
    },
  };
}

type SessionCalls = ReturnType<typeof createSessionCalls>;

/** The internal calls behind frames and unary methods alike, acting as `device`. */
function createSessionCalls(clients: SessionServiceOptions["clients"]) {
  const acknowledgements = createAcknowledgementBatcher({
    history: clients.history,
    deadlineMs: ACK_DEADLINE_MS,
  });
  return {
    send(device: DeviceAddress, message: OutgoingMessage, callOptions: GrpcCallOptions) {
      return clients.sender.sendMessage(
        {
          sender: device,
          conversationId: message.conversationId,
          clientMessageId: message.clientMessageId,
          envelope: message.envelope,
          forceTrace: message.forceTrace,
        },
        callOptions,
      );
    },
    ack(device: DeviceAddress, ack: Acknowledgement, callOptions: GrpcCallOptions): Promise<bigint> {
      return recordAlone(clients.history, toAcknowledgement(device, ack), callOptions);
    },
    /** The same as `ack`, in a RecordAcknowledgements call shared with the other streams' acks. */
    ackInBatch: (device: DeviceAddress, ack: Acknowledgement) => acknowledgements.submit(device, ack),
    async setTyping(device: DeviceAddress, typing: TypingUpdate, callOptions: GrpcCallOptions) {
      const response = await clients.delivery.setTyping(
        { device, conversationId: typing.conversationId, typing: typing.typing },
        callOptions,
      );
      return response.expiresAt;
    },
    async requestResend(device: DeviceAddress, resend: ResendRequest, callOptions: GrpcCallOptions) {
      await clients.history.requestResend(
        {
          device,
          conversationId: resend.conversationId,
          messageId: resend.messageId,
          identityKey: resend.identityKey,
        },
        callOptions,
      );
    },
  };
}

interface FrameReaderOptions {
  readonly stream: DeviceStream;
  readonly device: DeviceAddress;
  readonly ctx: HandlerContext;
  readonly hub: StreamHub;
  readonly calls: SessionCalls;
  readonly statusOf: (err: unknown, ctx: HandlerContext, via: PassthroughRoute) => Status;
  readonly fetchPage: FetchPage;
  readonly helloWaitMs: number;
  readonly acknowledge: Acknowledge;
}

/**
 * Reads a Session's client frames until the client ends its side (the stream then ends OK once
 * the frames in flight are answered) or the stream closes. Each frame is validated on its own: a
 * bad one gets a FrameError and the stream stays open, until too many (PROTOCOL_ERROR). Sends to
 * one conversation run one after another, in the order the client sent them (so its messages keep
 * their order); everything else runs concurrently, up to MAX_FRAMES_IN_FLIGHT frames.
 */
function createFrameReader(
  options: FrameReaderOptions,
): (requests: AsyncIterable<SessionRequest>) => Promise<void> {
  const { stream, device, ctx, hub, calls, statusOf } = options;
  const callOptions: GrpcCallOptions = { signal: ctx.signal };
  const chains = new Map<string, Promise<void>>();
  let inFlight = 0;
  let wake: (() => void) | undefined;
  let hello: "waiting" | "absent" | "received" = "waiting";

  const goLiveWithoutHello = () => {
    if (hello !== "waiting") return;
    hello = "absent";
    stream.goLive();
  };
  const helloTimer = setTimeout(goLiveWithoutHello, options.helloWaitMs);

  const frameError = (frameId: bigint, error: Status) =>
    stream.reply(frame({ case: "frameError", value: { frameId, error } }));

  /** Runs `task` after the previous task of the same key (ordered per key, concurrent across keys). */
  const run = (key: string, task: () => Promise<void>) => {
    inFlight++;
    const next = (chains.get(key) ?? Promise.resolve()).then(task).finally(() => {
      inFlight--;
      if (chains.get(key) === next) chains.delete(key);
      const resume = wake;
      wake = undefined;
      resume?.();
    });
    chains.set(key, next);
  };
  const room = async (limit: number) => {
    while (inFlight >= limit) await new Promise<void>((resolve) => (wake = resolve));
  };

  const handle = (request: SessionRequest) => {
    const frameId = request.frame?.frameId ?? 0n;
    try {
      validateMessage(SessionRequestSchema, request);
    } catch (err) {
      frameError(frameId, toStatus(toParleyError(err)));
      if (stream.recordBadFrame()) stream.close(Closes.protocolError);
      return;
    }
    const body = request.frame?.body;
    if (body === undefined || body.case === undefined) return; // ruled out by validation
    if (body.case !== "hello") goLiveWithoutHello();
    switch (body.case) {
      case "hello": {
        if (hello === "received") {
          frameError(frameId, toStatus(invalidArgument("HELLO_REPEATED", "a stream takes one hello frame")));
          return;
        }
        hello = "received";
        clearTimeout(helloTimer);
        const cursor = body.value.resumeCursor;
        if (cursor.length === 0) {
          stream.goLive();
          return;
        }
        // A failed replay ends the stream (see DeviceStream.resume): the client reconnects from its
        // last cursor, or starts over on INVALID_CURSOR.
        stream
          .resume(cursor, options.fetchPage)
          .catch((err: unknown) => stream.fail(failure(statusOf(err, ctx, ROUTES.syncSession))));
        return;
      }
      case "send": {
        const message = body.value;
        const attributes = sendAttributes(device, message);
        run(`send:${message.conversationId}`, () =>
          inFrameSpan("send", attributes, [], async (span) => {
            try {
              const response = await calls.send(device, message, callOptions);
              span.setAttribute("parley.message_id", response.messageId);
              stream.reply(
                frame({
                  case: "sendResult",
                  value: {
                    frameId,
                    clientMessageId: message.clientMessageId,
                    outcome: { case: "accepted", value: accepted(response) },
                  },
                }),
              );
            } catch (err) {
              const status = statusOf(err, ctx, ROUTES.send);
              failFrameSpan(span, status);
              stream.reply(
                frame({
                  case: "sendResult",
                  value: {
                    frameId,
                    clientMessageId: message.clientMessageId,
                    outcome: { case: "error", value: status },
                  },
                }),
              );
            }
          }),
        );
        return;
      }
      case "ack": {
        const ack = body.value;
        const links = options.acknowledge(device, ack);
        // The ack of a traced message is traced too (its links say so), whatever the ratio.
        const attributes = {
          ...ackAttributes(device, ack),
          ...(links.length > 0 ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
        };
        run(`ack:${ack.conversationId}`, () =>
          inFrameSpan("ack", attributes, links, async (span) => {
            try {
              // Shares a call with the acks other streams received in the same turn; a traced one
              // carries its span's context, so history's work on it still shows under this span.
              const upTo = await calls.ackInBatch(device, ack);
              span.setAttribute("parley.receipt.state_up_to_seq", Number(upTo));
            } catch (err) {
              const status = statusOf(err, ctx, ackRoute(ack));
              failFrameSpan(span, status);
              frameError(frameId, status);
            }
          }),
        );
        return;
      }
      case "typing": {
        const typing = body.value;
        run(`typing:${typing.conversationId}`, async () => {
          try {
            await calls.setTyping(device, typing, callOptions);
          } catch (err) {
            frameError(frameId, statusOf(err, ctx, ROUTES.setTyping));
          }
        });
        return;
      }
      case "presenceSubscribe":
        stream.setPresenceInterest(body.value.userIds);
        return;
      case "heartbeat":
        stream.reply(frame({ case: "heartbeat", value: { serverTime: timestampNow() } }));
        hub.heartbeat(stream, body.value.idle);
        return;
      case "resendRequest": {
        const resend = body.value;
        run(`resend:${frameId}`, async () => {
          try {
            await calls.requestResend(device, resend, callOptions);
          } catch (err) {
            frameError(frameId, statusOf(err, ctx, ROUTES.requestResend));
          }
        });
        return;
      }
    }
  };

  return async (requests) => {
    const iterator = requests[Symbol.asyncIterator]();
    try {
      for (;;) {
        await room(MAX_FRAMES_IN_FLIGHT);
        if (stream.isClosed) return;
        const next = await iterator.next();
        if (stream.isClosed) return;
        if (next.done === true) {
          // The client ended its side: answer what is in flight, then end the stream.
          await room(1);
          stream.end();
          return;
        }
        stream.touch();
        // A frame Connect read (JSON, say) is measured as the contract counts: binary. Unread
        // by `handle`, as client-frames.ts leaves one that announces more.
        const oversized = oversizedFrameBytes(next.value);
        if (oversized !== undefined) {
          stream.close(messageTooLargeClose(oversized));
          return;
        }
        handle(next.value);
      }
    } catch (err) {
      // The client's side failed: reset or gone (the signal says so), or a message too large to
      // read or that does not decode, which no FrameError can answer (there is no frame id to echo).
      if (ctx.signal.aborted) stream.abort();
      else if (err instanceof FrameTooLargeError) stream.close(messageTooLargeClose(err.frameBytes));
      else if (err instanceof ConnectError && err.code === Code.ResourceExhausted)
        stream.close(messageTooLargeClose(undefined));
      else stream.close(Closes.protocolError);
    } finally {
      clearTimeout(helloTimer);
    }
  };
}

/** The error a stream ends with, from the status the edge mapped (same code, reason, details). */
function failure(status: Status) {
  return parleyErrorFromStatus(status.code, status.message, status.details);
}

const tracer = trace.getTracer("parley.edge");

/** gRPC codes (google.rpc.Status) that make a server span an error: server faults only. */
const SERVER_FAULTS = new Set([2, 4, 12, 13, 14, 15]);

/**
 * Runs the work of one client frame of a Session in its own trace: a SERVER span
 * `SessionService/Session <frame>` (a new root, so a send with `force_trace` is sampled whatever
 * the stream's trace was, and a stream open for hours is not one giant trace), linked to the
 * stream's span. The internal calls the frame makes are its children.
 */
function inFrameSpan(
  kind: "send" | "ack",
  attributes: Attributes,
  links: Link[],
  work: (span: Span) => Promise<void>,
): Promise<void> {
  const stream = trace.getActiveSpan()?.spanContext();
  return tracer.startActiveSpan(
    `${SessionService.typeName}/${SessionService.method.session.name} ${kind}`,
    {
      kind: SpanKind.SERVER,
      root: true,
      attributes: {
        "rpc.system": "connect_rpc",
        "rpc.service": SessionService.typeName,
        "rpc.method": SessionService.method.session.name,
        "parley.frame": kind,
        ...attributes,
      },
      links: [
        ...(stream === undefined || !trace.isSpanContextValid(stream)
          ? []
          : [{ context: stream, attributes: { "parley.link.kind": "stream" } }]),
        ...links,
      ],
    },
    async (span) => {
      try {
        await work(span);
      } finally {
        span.end();
      }
    },
  );
}

function failFrameSpan(span: Span, status: Status): void {
  span.setAttribute("rpc.grpc.status_code", status.code);
  if (SERVER_FAULTS.has(status.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: status.message });
}

/** Ids of a send for its span (never the envelope: ciphertext stays out of traces). */
function sendAttributes(device: DeviceAddress, message: OutgoingMessage): Attributes {
  return {
    "parley.conversation_id": message.conversationId,
    "parley.client_message_id": message.clientMessageId,
    "parley.sender.user_id": device.userId,
    "parley.sender.device_id": device.deviceId,
    ...(message.forceTrace ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
  };
}

function ackAttributes(device: DeviceAddress, ack: Acknowledgement): Attributes {
  return {
    "parley.conversation_id": ack.conversationId,
    "parley.user_id": device.userId,
    "parley.device_id": device.deviceId,
    "parley.receipt.kind": ack.kind === ReceiptKind.READ ? "read" : "delivered",
    ...(ack.target.case === "messageIds"
      ? { "parley.message_ids": ack.target.value.messageIds.slice(0, 32) }
      : { "parley.receipt.up_to_seq": Number(ack.target.value ?? 0n) }),
  };
}

/** An ack arrived: the links to the traces of the messages it covers. */
type Acknowledge = (device: DeviceAddress, ack: Acknowledgement) => Link[];

/**
 * For the messages this edge pushed that an ack covers: records each one's latency from its
 * acceptance (the first ack of a message only), and gives the links to their traces.
 */
function createAcknowledge(pushed: PushedMessages | undefined, metrics: StreamMetrics): Acknowledge {
  return (device, ack) => {
    if (pushed === undefined) return [];
    const covered = pushed.take(
      device,
      ack.conversationId,
      ack.target.case === "messageIds"
        ? { messageIds: ack.target.value.messageIds }
        : { upToSeq: ack.target.value ?? 0n },
    );
    if (covered.acceptedAtMs.length > 0) {
      const kind = ack.kind === ReceiptKind.READ ? "read" : "delivered";
      const now = Date.now();
      for (const acceptedAt of covered.acceptedAtMs)
        metrics.acknowledged(kind, Math.max(0, now - acceptedAt) / 1000);
    }
    return covered.links;
  };
}

function ackRoute(ack: Acknowledgement): PassthroughRoute {
  return ack.kind === ReceiptKind.READ ? ROUTES.markRead : ROUTES.markDelivered;
}

function accepted(response: SendMessageResponse): MessageInitShape<typeof SendAcceptedSchema> {
  return {
    messageId: response.messageId,
    ...(response.acceptedAt === undefined ? {} : { acceptedAt: response.acceptedAt }),
    duplicate: response.duplicate,
  };
}

/**
 * How long the edge waits for history to record an acknowledgement sent on the stream. Nobody
 * waits on it (the device displayed the message already) and a late ack is still an ack, while a
 * group's members all acknowledge one message within a moment: on the cluster profile each is a
 * conditional write in Cassandra, so a 1,000-member burst queues for longer than the usual 5 s.
 */
const ACK_DEADLINE_MS = 20_000;

/** The client's deadline and cancellation, as in the passthroughs. */
function unaryOptions(ctx: HandlerContext): GrpcCallOptions {
  const timeoutMs = ctx.timeoutMs();
  return { signal: ctx.signal, ...(timeoutMs === undefined ? {} : { deadline: Math.max(0, timeoutMs) }) };
}

/** A required field the validation interceptor has already checked. */
function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw invalidArgument("VALIDATION_FAILED", `${field} is required`);
  return value;
}
