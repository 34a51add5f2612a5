// The edge's streaming half against real peers: an edge (startEdge) on a real in-process registry,
// small real gRPC servers speaking the sender, history and delivery contracts (recording what they
// get), and real HTTP/2 Connect clients. Session and Subscribe, frames both ways, PushBatch on the
// edge's internal port, replay from a cursor, replacement, idle timeout, drain.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyUnpack, timestampNow } from "@bufbuild/protobuf/wkt";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDevIssuer } from "../edge/auth/dev-issuer.ts";
import type { EdgeConfig } from "../edge/config.ts";
import {
  DEFAULT_JWT_AUDIENCE,
  DEV_ISSUER,
  devIssuerAuthConfig,
  devIssuerKeyPath,
  loadEdgeConfig,
} from "../edge/config.ts";
import type { RunningEdge } from "../edge/server.ts";
import { startEdge } from "../edge/server.ts";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { ContentKind } from "../gen/parley/common/v1/envelope_pb.ts";
import type { MessageSchema } from "../gen/parley/common/v1/message_pb.ts";
import { ReceiptKind } from "../gen/parley/common/v1/message_pb.ts";
import { DeliveryService, DeviceActivity } from "../gen/parley/delivery/v1/delivery_service_pb.ts";
import type {
  PushBatchRequestSchema,
  PushItemSchema,
} from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgePushService, PushOutcome } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { ClientFrameSchema, ServerFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { CloseReason } from "../gen/parley/edge/v1/frames_pb.ts";
import { SessionRequestSchema, SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { PresenceState } from "../gen/parley/events/v1/presence_events_pb.ts";
import type { SyncItemSchema } from "../gen/parley/history/v1/history_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { SenderService } from "../gen/parley/sender/v1/sender_service_pb.ts";
import { failedPrecondition } from "../lib/errors.ts";
import { closeChannel, createGrpcClient } from "../lib/grpc/client.ts";
import { fromGrpcError } from "../lib/grpc/grpc-error.ts";
import type { GrpcServer } from "../lib/grpc/server.ts";
import { createGrpcServer, grpcService } from "../lib/grpc/server.ts";
import { unimplementedService } from "../lib/grpc/unimplemented.ts";
import { createLogger } from "../lib/logging.ts";
import { CLIENT_MESSAGE_MAX_BYTES } from "../lib/message-limits.ts";
import type { InProcessHostLease, InProcessRegistry } from "../lib/registry/in-process-registry.ts";
import { createInProcessRegistry } from "../lib/registry/in-process-registry.ts";
import type { Registry } from "../lib/registry/registry.ts";

const logger = createLogger("test", "silent");

const conversation = "0190e8f4-1c7b-7000-8000-00000000c0c0";
/** The fake sender refuses sends to this conversation, as sender does for a non-member. */
const forbiddenConversation = "0190e8f4-1c7b-7000-8000-00000000dead";
const uuid = (n: number) => `0190e8f4-1c7b-7000-8000-${n.toString(16).padStart(12, "0")}`;
const bytes = (text: string) => new TextEncoder().encode(text);
const text = (value: Uint8Array) => new TextDecoder().decode(value);

// ---------------------------------------------------------------------------------------------
// The peers: recording implementations of the real internal contracts, on a real gRPC server.

const received: Array<{ method: string; request: unknown }> = [];
const receivedBy = <T = Record<string, unknown>>(method: string) =>
  received.filter((r) => r.method === method).map((r) => r.request as T);

/** Sync pages by cursor; the second page waits for `releaseSecondPage` (a replay in progress). */
let releaseSecondPage: () => void = () => {};
let secondPageGate = Promise.resolve();

function storedMessage(n: number): MessageInitShape<typeof MessageSchema> {
  return {
    messageId: uuid(n),
    conversationId: conversation,
    seq: BigInt(n),
    sender: { userId: "bob", deviceId: "phone" },
    clientMessageId: uuid(1000 + n),
    kind: ContentKind.TEXT,
    ciphertext: bytes(`ciphertext ${n}`),
  };
}
const syncItem = (n: number): MessageInitShape<typeof SyncItemSchema> => ({
  cursor: bytes(`c${n}`),
  item: { case: "message", value: storedMessage(n) },
});

function fakeServices() {
  return [
    grpcService(SenderService, {
      async sendMessage(request) {
        received.push({ method: "SendMessage", request });
        if (request.conversationId === forbiddenConversation) {
          throw failedPrecondition("NOT_A_MEMBER", "you are not a member of this conversation", {
            metadata: { conversationId: request.conversationId },
          });
        }
        // A message id derived from the client's id, so a test can tell it came from here.
        return {
          messageId: `${request.clientMessageId.slice(0, -4)}beef`,
          acceptedAt: timestampNow(),
          duplicate: false,
        };
      },
    }),
    grpcService(HistoryService, {
      ...unimplementedService(HistoryService),
      async sync(request) {
        received.push({ method: "Sync", request });
        switch (text(request.cursor)) {
          case "c0":
            return { items: [syncItem(1), syncItem(2)], nextCursor: bytes("c2"), more: true };
          case "c2":
            await secondPageGate;
            return { items: [syncItem(3)], nextCursor: bytes("c3"), more: false };
          default:
            return { nextCursor: request.cursor, more: false };
        }
      },
      async markDelivered(request) {
        received.push({ method: "MarkDelivered", request });
        return { recorded: true, state: { deliveredUpToSeq: 7n, readUpToSeq: 2n } };
      },
      async markRead(request) {
        received.push({ method: "MarkRead", request });
        return { recorded: true, state: { deliveredUpToSeq: 7n, readUpToSeq: 5n } };
      },
      async recordAcknowledgements(request) {
        received.push({ method: "RecordAcknowledgements", request });
        return {
          outcomes: request.acknowledgements.map(({ kind }) => ({
            outcome: {
              case: "result" as const,
              value: {
                recorded: true,
                state: { deliveredUpToSeq: 7n, readUpToSeq: kind.case === "read" ? 5n : 2n },
              },
            },
          })),
        };
      },
      async requestResend(request) {
        received.push({ method: "RequestResend", request });
        return {};
      },
    }),
    grpcService(DeliveryService, {
      ...unimplementedService(DeliveryService),
      async updatePresence(request) {
        received.push({ method: "UpdatePresence", request });
        return { expiresAt: timestampNow() };
      },
      async setTyping(request) {
        received.push({ method: "SetTyping", request });
        return { expiresAt: timestampNow() };
      },
    }),
  ];
}

const activityName = (activity: number) =>
  Object.entries(DeviceActivity).find(([, value]) => value === activity)?.[0] ?? String(activity);

/** Every (device, activity) the edge reported to delivery, in order. */
function presenceReports(): string[] {
  return receivedBy<{ updates: Array<{ device?: { userId: string; deviceId: string }; activity: number }> }>(
    "UpdatePresence",
  ).flatMap((r) =>
    r.updates.map((u) => `${u.device?.userId}/${u.device?.deviceId}:${activityName(u.activity)}`),
  );
}

// ---------------------------------------------------------------------------------------------
// The edges under test.

let dir: string;
let peers: GrpcServer;
let peersAddress: string;
let registry: InProcessRegistry;
let edge: RunningEdge;
let issuer: Awaited<ReturnType<typeof openDevIssuer>>;

function edgeConfig(env: Record<string, string> = {}): EdgeConfig {
  return {
    ...loadEdgeConfig({ PARLEY_EDGE_PORT: "0", PARLEY_EDGE_PUSH_PORT: "0", ...env }),
    ...devIssuerAuthConfig(dir),
    connectionAddress: peersAddress,
    keyAddress: peersAddress,
    senderAddress: peersAddress,
    historyAddress: peersAddress,
    deliveryAddress: peersAddress,
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "parley-edge-session-"));
  peers = createGrpcServer({ name: "peers", logger, services: fakeServices() });
  peersAddress = `127.0.0.1:${await peers.listen("127.0.0.1", 0)}`;
  registry = createInProcessRegistry({ logger });
  edge = await startEdge(edgeConfig({ PARLEY_EDGE_HEARTBEAT_INTERVAL: "5s" }), logger, {
    registry,
    helloWaitMs: 300,
  });
  issuer = await openDevIssuer(devIssuerKeyPath(dir));
});

afterAll(async () => {
  await edge?.stop();
  await peers?.shutdown(1_000);
  await registry?.close();
  rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Clients.

async function token(userId: string, deviceId: string): Promise<string> {
  return issuer.mint({
    userId,
    deviceId,
    ttlMs: 600_000,
    issuer: DEV_ISSUER,
    audience: DEFAULT_JWT_AUDIENCE,
  });
}

const bearer =
  (value: string | undefined): Interceptor =>
  (next) =>
  (req) => {
    if (value !== undefined) req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };

/** gRPC over HTTP/2 (bidi streams need HTTP/2). */
function grpc(bearerToken: string | undefined, target: RunningEdge = edge): Transport {
  return createGrpcTransport({ baseUrl: target.url, interceptors: [bearer(bearerToken)] });
}

/** An async iterable the test feeds frame by frame: the up direction of a Session. */
function outbox() {
  const items: Array<MessageInitShape<typeof SessionRequestSchema>> = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  return {
    send(frame: MessageInitShape<typeof ClientFrameSchema>) {
      items.push({ frame });
      notify();
    },
    end() {
      ended = true;
      notify();
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const item = items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    },
  };
}

/** Collects a stream's frames in the background; `next` hands them out in order, heartbeats skipped. */
function reader(responses: AsyncIterable<{ frame?: ServerFrame | undefined }>) {
  const frames: ServerFrame[] = [];
  let error: unknown;
  let index = 0;
  const done = (async () => {
    try {
      for await (const response of responses) if (response.frame !== undefined) frames.push(response.frame);
    } catch (err) {
      error = err;
    }
  })();
  return {
    frames,
    async next(timeoutMs = 5_000): Promise<ServerFrame> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        while (index < frames.length) {
          const frame = frames[index++] as ServerFrame;
          if (frame.body.case !== "heartbeat") return frame;
        }
        if (Date.now() > deadline) throw new Error(`no frame within ${timeoutMs} ms (got ${frames.length})`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    },
    /** Frames not yet handed out (heartbeats skipped). */
    pending(): ServerFrame[] {
      return frames.slice(index).filter((f) => f.body.case !== "heartbeat");
    },
    /** How the stream ended: undefined when it ended OK. */
    async end(): Promise<ConnectError | undefined> {
      await done;
      if (error === undefined) return undefined;
      expect(error).toBeInstanceOf(ConnectError);
      return error as ConnectError;
    },
  };
}

async function openSession(userId: string, deviceId: string, target: RunningEdge = edge) {
  const up = outbox();
  const abort = new AbortController();
  const down = reader(
    createClient(SessionService, grpc(await token(userId, deviceId), target)).session(up, {
      signal: abort.signal,
    }),
  );
  return { up, down, abort };
}

type FrameBody = ServerFrame["body"];
type FrameValue<C extends NonNullable<FrameBody["case"]>> = Extract<FrameBody, { case: C }>["value"];

/** The frame's body, after checking it is a `which`. */
function expectCase<C extends NonNullable<FrameBody["case"]>>(frame: ServerFrame, which: C): FrameValue<C> {
  expect(frame.body.case).toBe(which);
  return frame.body.value as unknown as FrameValue<C>;
}

/** The revision of the device's route, once it has one. */
async function routeRevision(userId: string, deviceId: string): Promise<bigint> {
  await expect.poll(() => registry.route(userId, deviceId)).toBeDefined();
  return (await registry.route(userId, deviceId))?.revision ?? 0n;
}

let batches = 0;
function pushClient(target: RunningEdge = edge) {
  return createGrpcClient(EdgePushService, target.pushAddress);
}
function messageItem(userId: string, deviceId: string, n: number): MessageInitShape<typeof PushItemSchema> {
  return {
    devices: [{ userId, deviceId }],
    payload: { case: "message", value: storedMessage(n) },
    cursor: bytes(`c${n}`),
  };
}
async function batchFor(
  items: Array<MessageInitShape<typeof PushItemSchema>>,
  routes: Array<{ userId: string; deviceId: string; revision?: bigint }>,
): Promise<MessageInitShape<typeof PushBatchRequestSchema>> {
  return {
    batchId: `batch-${++batches}`,
    hostId: edge.hostId,
    routes: await Promise.all(
      routes.map(async (r) => ({
        device: { userId: r.userId, deviceId: r.deviceId },
        routeRevision: r.revision ?? (await routeRevision(r.userId, r.deviceId)),
      })),
    ),
    items,
  };
}

// ---------------------------------------------------------------------------------------------

describe("Session", () => {
  it("opens with ServerReady, registers the device route and reports presence", async () => {
    const { up, down } = await openSession("alice", "phone");
    const ready = expectCase(await down.next(), "ready");
    expect(ready.hostId).toBe(edge.hostId);
    expect(ready.device).toMatchObject({ userId: "alice", deviceId: "phone" });
    expect(ready.heartbeatInterval?.seconds).toBe(5n);
    expect(ready.serverTime).toBeDefined();
    expect((await registry.route("alice", "phone"))?.hostId).toBe(edge.hostId);
    await expect.poll(presenceReports).toContain("alice/phone:ACTIVE");

    up.end();
    expect(await down.end()).toBeUndefined();
    await expect.poll(() => registry.route("alice", "phone")).toBeUndefined();
    await expect.poll(presenceReports).toContain("alice/phone:DISCONNECTED");
  });

  it("refuses a stream without a valid token", async () => {
    for (const bearerToken of [undefined, "not-a-jwt"]) {
      const down = reader(createClient(SessionService, grpc(bearerToken)).session(outbox()));
      const err = await down.end();
      expect(err?.code).toBe(Code.Unauthenticated);
      expect(down.frames).toEqual([]);
    }
    expect(await registry.route("nobody", "x")).toBeUndefined();
  });

  it("answers a bad frame with FrameError (field violations) and keeps the stream open", async () => {
    const { up, down } = await openSession("alice", "tablet");
    expectCase(await down.next(), "ready");
    up.send({
      frameId: 7n,
      body: {
        case: "ack",
        value: {
          conversationId: "not-a-uuid",
          kind: ReceiptKind.READ,
          target: { case: "upToSeq", value: 3n },
        },
      },
    });
    const error = expectCase(await down.next(), "frameError");
    expect(error.frameId).toBe(7n);
    expect(error.error?.code).toBe(Code.InvalidArgument);
    const details = error.error?.details ?? [];
    const badRequest = details.map((d) => anyUnpack(d, BadRequestSchema)).find((d) => d !== undefined);
    expect(badRequest?.fieldViolations.map((v) => v.field)).toEqual(["frame.ack.conversation_id"]);
    const info = details.map((d) => anyUnpack(d, ErrorInfoSchema)).find((d) => d !== undefined);
    expect(info?.reason).toBe("VALIDATION_FAILED");

    // Still open: a heartbeat is answered, a valid ack reaches history as this device.
    up.send({ frameId: 8n, body: { case: "heartbeat", value: { idle: true } } });
    up.send({
      frameId: 9n,
      body: {
        case: "ack",
        value: {
          conversationId: conversation,
          kind: ReceiptKind.READ,
          target: { case: "upToSeq", value: 3n },
        },
      },
    });
    // Untraced, so in a RecordAcknowledgements call shared with the other streams' acks.
    const readAcks = () =>
      receivedBy<{ acknowledgements: Array<{ kind: { case: string; value: unknown } }> }>(
        "RecordAcknowledgements",
      ).flatMap((r) => r.acknowledgements.filter((a) => a.kind.case === "read").map((a) => a.kind.value));
    await expect.poll(readAcks).toContainEqual(
      expect.objectContaining({
        device: expect.objectContaining({ userId: "alice", deviceId: "tablet" }),
        conversationId: conversation,
        target: { case: "upToSeq", value: 3n },
      }),
    );
    await expect.poll(() => down.frames.some((f) => f.body.case === "heartbeat")).toBe(true);
    await expect.poll(presenceReports).toContain("alice/tablet:IDLE");
    up.end();
    expect(await down.end()).toBeUndefined();
  });

  it("closes with PROTOCOL_ERROR (invalid_argument) after too many bad frames", async () => {
    const { up, down } = await openSession("alice", "watch");
    expectCase(await down.next(), "ready");
    for (let i = 1; i <= 11; i++)
      up.send({ frameId: BigInt(i), body: { case: "typing", value: { conversationId: "x" } } });
    for (let i = 1; i <= 11; i++) expect(expectCase(await down.next(), "frameError").frameId).toBe(BigInt(i));
    expect(expectCase(await down.next(), "close").reason).toBe(CloseReason.PROTOCOL_ERROR);
    expect((await down.end())?.code).toBe(Code.InvalidArgument);
  });

  it.each([
    ["served directly", { useBinaryFormat: true }],
    // A timeout header sends the Session through Connect (client-frames.ts).
    ["through Connect", { useBinaryFormat: true, defaultTimeoutMs: 60_000 }],
    // JSON is larger on the wire; the limit counts the binary encoding (message-size.ts).
    ["through Connect, as JSON", { useBinaryFormat: false }],
  ])(
    "closes with MESSAGE_TOO_LARGE (resource_exhausted) on a frame over 4 MiB, %s",
    async (_path, options) => {
      const transport = createGrpcTransport({
        baseUrl: edge.url,
        interceptors: [bearer(await token("alice", "laptop"))],
        ...options,
      });
      const up = outbox();
      const down = reader(createClient(SessionService, transport).session(up));
      expectCase(await down.next(), "ready");
      const envelope = {
        kind: ContentKind.TEXT,
        payload: { case: "shared" as const, value: { ciphertext: new Uint8Array(CLIENT_MESSAGE_MAX_BYTES) } },
      };
      const tooLarge = {
        frameId: 1n,
        body: {
          case: "send" as const,
          value: { conversationId: conversation, clientMessageId: uuid(4_100), envelope },
        },
      };
      up.send(tooLarge);
      const close = expectCase(await down.next(), "close");
      expect(close.reason).toBe(CloseReason.MESSAGE_TOO_LARGE);
      // The frame's size in the binary encoding, however it travelled.
      const bytes = toBinary(SessionRequestSchema, create(SessionRequestSchema, { frame: tooLarge })).length;
      expect(close.message).toContain(
        `a client frame of ${bytes} bytes was larger than ${CLIENT_MESSAGE_MAX_BYTES} bytes`,
      );
      const end = await down.end();
      expect(end?.code).toBe(Code.ResourceExhausted);
      expect(ConnectError.from(end).findDetails(ErrorInfoSchema)[0]?.reason).toBe("MESSAGE_TOO_LARGE");
      up.end();
    },
  );

  it.each([
    ["gRPC", false],
    ["Connect JSON", true],
  ])(
    "refuses a unary Send over 4 MiB (%s) with RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE before it reaches sender",
    async (_protocol, json) => {
      const bearerToken = bearer(await token("alice", "laptop"));
      const transport = json
        ? createConnectTransport({ baseUrl: edge.url, httpVersion: "1.1", interceptors: [bearerToken] })
        : createGrpcTransport({ baseUrl: edge.url, interceptors: [bearerToken] });
      const client = createClient(SessionService, transport);
      const send = (ciphertextBytes: number, n: number) =>
        client
          .send({
            message: {
              conversationId: conversation,
              clientMessageId: uuid(n),
              envelope: {
                kind: ContentKind.TEXT,
                payload: { case: "shared" as const, value: { ciphertext: new Uint8Array(ciphertextBytes) } },
              },
            },
          })
          .then(
            () => undefined,
            (err: unknown) => ConnectError.from(err),
          );
      const sendsBefore = receivedBy("SendMessage").length;
      const refused = await send(CLIENT_MESSAGE_MAX_BYTES, 4_101);
      expect(refused?.code).toBe(Code.ResourceExhausted);
      expect(refused?.findDetails(ErrorInfoSchema)[0]?.reason).toBe("MESSAGE_TOO_LARGE");
      expect(refused?.rawMessage).toContain(`over the edge's limit of ${CLIENT_MESSAGE_MAX_BYTES}`);
      // Under the limit in binary, over it as JSON: measured as binary, so refused by its rules instead.
      const underInBinary = await send(CLIENT_MESSAGE_MAX_BYTES - 4_096, 4_102);
      expect(underInBinary?.code).toBe(Code.InvalidArgument);
      expect(receivedBy("SendMessage").length).toBe(sendsBefore);
    },
  );

  it("sends through sender as the caller: SendResult with the accepted id, or the refusal with its reason", async () => {
    const { up, down } = await openSession("alice", "phone");
    expectCase(await down.next(), "ready");
    const envelope = {
      kind: ContentKind.TEXT,
      payload: { case: "shared" as const, value: { ciphertext: bytes("hi") } },
    };
    up.send({
      frameId: 42n,
      body: { case: "send", value: { conversationId: conversation, clientMessageId: uuid(4242), envelope } },
    });
    const ok = expectCase(await down.next(), "sendResult");
    expect(ok.frameId).toBe(42n);
    expect(ok.clientMessageId).toBe(uuid(4242));
    expect(ok.outcome.case).toBe("accepted");
    expect(ok.outcome.value).toMatchObject({ messageId: `${uuid(4242).slice(0, -4)}beef`, duplicate: false });
    expect(receivedBy("SendMessage").at(-1)).toMatchObject({
      sender: { userId: "alice", deviceId: "phone" },
      conversationId: conversation,
      clientMessageId: uuid(4242),
    });

    up.send({
      frameId: 43n,
      body: {
        case: "send",
        value: { conversationId: forbiddenConversation, clientMessageId: uuid(4343), envelope },
      },
    });
    const refused = expectCase(await down.next(), "sendResult");
    expect(refused.frameId).toBe(43n);
    expect(refused.outcome.case).toBe("error");
    const status = refused.outcome.case === "error" ? refused.outcome.value : undefined;
    expect(status?.code).toBe(Code.FailedPrecondition);
    expect(status?.message).toBe("you are not a member of this conversation");
    const info = (status?.details ?? [])
      .map((d) => anyUnpack(d, ErrorInfoSchema))
      .find((d) => d !== undefined);
    expect(info).toMatchObject({
      reason: "NOT_A_MEMBER",
      metadata: { conversationId: forbiddenConversation },
    });

    // The unary Send makes the same call and fails the same way.
    const unary = createClient(SessionService, grpc(await token("alice", "phone")));
    const err = await unary
      .send({ message: { conversationId: forbiddenConversation, clientMessageId: uuid(4444), envelope } })
      .then(
        () => undefined,
        (e: unknown) => e as ConnectError,
      );
    expect(err?.code).toBe(Code.FailedPrecondition);
    expect(err?.findDetails(ErrorInfoSchema)[0]?.reason).toBe("NOT_A_MEMBER");
    const acked = await unary.ack({
      ack: {
        conversationId: conversation,
        kind: ReceiptKind.DELIVERED,
        target: { case: "upToSeq", value: 7n },
      },
    });
    expect(acked.acknowledgedUpToSeq).toBe(7n);
    up.end();
    expect(await down.end()).toBeUndefined();
  });

  it("a second stream of the same device replaces the first: Close REPLACED, ended with aborted", async () => {
    const first = await openSession("erin", "phone");
    expectCase(await first.down.next(), "ready");
    const firstRevision = await routeRevision("erin", "phone");
    const second = await openSession("erin", "phone");
    expectCase(await second.down.next(), "ready");
    expect(expectCase(await first.down.next(), "close").reason).toBe(CloseReason.REPLACED);
    expect((await first.down.end())?.code).toBe(Code.Aborted);
    // The route is the second stream's, and survives the first stream's release.
    await expect.poll(() => routeRevision("erin", "phone")).toBeGreaterThan(firstRevision);
    expect((await registry.route("erin", "phone"))?.hostId).toBe(edge.hostId);
    expect(presenceReports().filter((r) => r === "erin/phone:DISCONNECTED")).toEqual([]);
    // And it gets the pushes.
    const push = pushClient();
    try {
      const response = await push.pushBatch(
        await batchFor([messageItem("erin", "phone", 60)], [{ userId: "erin", deviceId: "phone" }]),
      );
      expect(response.results[0]?.outcome).toBe(PushOutcome.PUSHED);
      expect(expectCase(await second.down.next(), "message").message?.messageId).toBe(uuid(60));
    } finally {
      closeChannel(push);
    }
    second.up.end();
    expect(await second.down.end()).toBeUndefined();
  });
});

describe("PushBatch", () => {
  it("pushes to the right stream as the right frame, once even when the batch is retried", async () => {
    const frank = await openSession("frank", "phone");
    const grace = await openSession("grace", "phone");
    expectCase(await frank.down.next(), "ready");
    expectCase(await grace.down.next(), "ready");
    const push = pushClient();
    try {
      const batch = await batchFor(
        [
          messageItem("frank", "phone", 70),
          {
            devices: [
              { userId: "frank", deviceId: "phone" },
              { userId: "grace", deviceId: "phone" },
            ],
            payload: {
              case: "receipt",
              value: {
                conversationId: conversation,
                reader: { userId: "henry", deviceId: "phone" },
                kind: ReceiptKind.READ,
                upToSeq: 70n,
              },
            },
          },
          {
            // Not a message: nothing but the batch id tells a retry of it from a new event.
            devices: [{ userId: "frank", deviceId: "phone" }],
            payload: {
              case: "typing",
              value: {
                conversationId: conversation,
                device: { userId: "henry", deviceId: "phone" },
                typing: true,
                changedAt: timestampNow(),
              },
            },
          },
        ],
        [
          { userId: "frank", deviceId: "phone" },
          { userId: "grace", deviceId: "phone" },
          { userId: "nobody", deviceId: "phone", revision: 1n },
        ],
      );
      const first = await push.pushBatch(batch);
      expect(first.results.map((r) => [r.device?.userId, r.outcome])).toEqual([
        ["frank", PushOutcome.PUSHED],
        ["grace", PushOutcome.PUSHED],
        ["nobody", PushOutcome.NOT_CONNECTED],
      ]);
      expect(first.results[0]?.routeRevision).toBe(await routeRevision("frank", "phone"));
      const message = expectCase(await frank.down.next(), "message");
      expect(message.message?.messageId).toBe(uuid(70));
      expect(text(message.cursor)).toBe("c70");
      expect(expectCase(await frank.down.next(), "receipt").upToSeq).toBe(70n);
      expect(expectCase(await frank.down.next(), "typing").typist?.userId).toBe("henry");
      expect(expectCase(await grace.down.next(), "receipt").reader?.userId).toBe("henry");

      // The same batch again (a delivery retry): same answer, nothing queued twice.
      const retried = await push.pushBatch(batch);
      expect(retried.results.map((r) => r.outcome)).toEqual(first.results.map((r) => r.outcome));
      await push.pushBatch(
        await batchFor([messageItem("frank", "phone", 71)], [{ userId: "frank", deviceId: "phone" }]),
      );
      expect(expectCase(await frank.down.next(), "message").message?.messageId).toBe(uuid(71));
      expect(frank.down.pending()).toEqual([]);

      // Presence only for users the stream follows.
      const presence = (userId: string) =>
        batchFor(
          [
            {
              devices: [{ userId: "frank", deviceId: "phone" }],
              payload: {
                case: "presence",
                value: { userId, state: PresenceState.ONLINE, changedAt: timestampNow() },
              },
            },
          ],
          [{ userId: "frank", deviceId: "phone" }],
        );
      await push.pushBatch(await presence("ivan"));
      frank.up.send({ frameId: 1n, body: { case: "presenceSubscribe", value: { userIds: ["judy"] } } });
      frank.up.send({ frameId: 2n, body: { case: "heartbeat", value: {} } });
      await expect
        .poll(() => frank.down.frames.filter((f) => f.body.case === "heartbeat").length)
        .toBeGreaterThan(0);
      await push.pushBatch(await presence("judy"));
      expect(expectCase(await frank.down.next(), "presence").userId).toBe("judy");

      // A batch for another host is refused.
      const wrongHost = await push.pushBatch({ ...(await presence("judy")), hostId: "edge-elsewhere" }).then(
        () => undefined,
        (e: unknown) => fromGrpcError(e),
      );
      expect(wrongHost).toMatchObject({ code: "failed_precondition", reason: "WRONG_HOST" });
    } finally {
      closeChannel(push);
    }
    frank.up.end();
    grace.up.end();
    await frank.down.end();
    await grace.down.end();
  });

  it("closes a stream whose device was routed to another host (REPLACED); a push for it is STALE_ROUTE or finds it gone", async () => {
    const carol = await openSession("carol", "phone");
    expectCase(await carol.down.next(), "ready");
    const ours = await routeRevision("carol", "phone");
    // The device connected to another host since: its route there is newer.
    const other = await registry.registerHost({
      hostId: "edge-other",
      pushAddress: "127.0.0.1:1",
      publicUrl: "http://127.0.0.1:1",
      state: "serving",
      load: 0,
    });
    const push = pushClient();
    try {
      const newer = await other.assignDevice("carol", "phone");
      expect(newer).toBeGreaterThan(ours);
      const response = await push.pushBatch(
        await batchFor(
          [messageItem("carol", "phone", 80)],
          [{ userId: "carol", deviceId: "phone", revision: newer }],
        ),
      );
      // The edge watches the routes: the move may close the stream before the push arrives
      // (NOT_CONNECTED); a push that comes first finds the stream stale and closes it.
      const result = response.results[0];
      if (result?.outcome === PushOutcome.STALE_ROUTE) expect(result.routeRevision).toBe(ours);
      else expect(result?.outcome).toBe(PushOutcome.NOT_CONNECTED);
      expect(expectCase(await carol.down.next(), "close").reason).toBe(CloseReason.REPLACED);
      expect((await carol.down.end())?.code).toBe(Code.Aborted);
      // The stale stream's release left the newer route alone.
      expect((await registry.route("carol", "phone"))?.hostId).toBe("edge-other");
    } finally {
      closeChannel(push);
      await other.revoke();
    }
  });
});

describe("resume", () => {
  it("replays Sync pages after the hello's cursor, then live pushes, losing and repeating nothing", async () => {
    secondPageGate = new Promise((resolve) => {
      releaseSecondPage = resolve;
    });
    const { up, down } = await openSession("heidi", "phone");
    up.send({
      frameId: 1n,
      body: { case: "hello", value: { resumeCursor: bytes("c0"), clientVersion: "test/1" } },
    });
    expectCase(await down.next(), "ready");
    // The replay is between its pages: push live, one message it is about to replay and one it is not.
    await expect
      .poll(() => receivedBy<{ cursor: Uint8Array }>("Sync").map((r) => text(r.cursor)))
      .toContain("c2");
    const push = pushClient();
    try {
      const response = await push.pushBatch(
        await batchFor(
          [messageItem("heidi", "phone", 3), messageItem("heidi", "phone", 4)],
          [{ userId: "heidi", deviceId: "phone" }],
        ),
      );
      expect(response.results[0]?.outcome).toBe(PushOutcome.PUSHED);
    } finally {
      closeChannel(push);
    }
    // Nothing live overtook the replay.
    expect(
      down.pending().map((f) => (f.body.case === "message" ? f.body.value.message?.seq : f.body.case)),
    ).toEqual([1n, 2n]);
    releaseSecondPage();
    const seqs: bigint[] = [];
    for (let i = 0; i < 4; i++) seqs.push(expectCase(await down.next(), "message").message?.seq ?? 0n);
    expect(seqs).toEqual([1n, 2n, 3n, 4n]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(down.pending()).toEqual([]);
    expect(
      receivedBy<{ device?: { userId: string } }>("Sync").filter((r) => r.device?.userId === "heidi"),
    ).toHaveLength(2);
    up.end();
    expect(await down.end()).toBeUndefined();
  });

  it("Subscribe (Connect over HTTP/1.1) replays from its cursor, then streams live", async () => {
    const abort = new AbortController();
    const transport = createConnectTransport({
      baseUrl: edge.url,
      httpVersion: "1.1",
      interceptors: [bearer(await token("ivan", "browser"))],
    });
    const down = reader(
      createClient(SessionService, transport).subscribe(
        { resumeCursor: bytes("c2") },
        { signal: abort.signal },
      ),
    );
    expectCase(await down.next(), "ready");
    expect(expectCase(await down.next(), "message").message?.seq).toBe(3n);
    const push = pushClient();
    try {
      await push.pushBatch(
        await batchFor([messageItem("ivan", "browser", 90)], [{ userId: "ivan", deviceId: "browser" }]),
      );
    } finally {
      closeChannel(push);
    }
    expect(expectCase(await down.next(), "message").message?.seq).toBe(90n);
    abort.abort();
    expect((await down.end())?.code).toBe(Code.Canceled);
    await expect.poll(() => registry.route("ivan", "browser")).toBeUndefined();
  });
});

describe("timeouts and shutdown", () => {
  it("closes a silent Session with IDLE_TIMEOUT (deadline_exceeded)", async () => {
    const idleRegistry = createInProcessRegistry({ logger });
    const quick = await startEdge(edgeConfig({ PARLEY_EDGE_HEARTBEAT_INTERVAL: "100ms" }), logger, {
      registry: idleRegistry,
      helloWaitMs: 50,
    });
    try {
      const { down } = await openSession("judy", "phone", quick);
      expect(expectCase(await down.next(), "ready").heartbeatInterval?.nanos).toBe(100_000_000);
      expect(expectCase(await down.next(), "close").reason).toBe(CloseReason.IDLE_TIMEOUT);
      expect((await down.end())?.code).toBe(Code.DeadlineExceeded);
      // Server heartbeats kept the quiet stream company until then.
      expect(down.frames.filter((f) => f.body.case === "heartbeat").length).toBeGreaterThan(0);
      await expect.poll(() => idleRegistry.route("judy", "phone")).toBeUndefined();
    } finally {
      await quick.stop();
      await idleRegistry.close();
    }
  });

  it("closes a stream with TOKEN_EXPIRED (unauthenticated) when its token's exp passes", async () => {
    const shortLived = await issuer.mint({
      userId: "lena",
      deviceId: "phone",
      ttlMs: 1_000,
      issuer: DEV_ISSUER,
      audience: DEFAULT_JWT_AUDIENCE,
    });
    const down = reader(createClient(SessionService, grpc(shortLived)).session(outbox()));
    expectCase(await down.next(), "ready");
    expect(expectCase(await down.next(3_000), "close").reason).toBe(CloseReason.TOKEN_EXPIRED);
    expect((await down.end())?.code).toBe(Code.Unauthenticated);
  });

  it("closes its streams when it loses its lease, and registers again", async () => {
    const lossy = createInProcessRegistry({ logger, sweepIntervalMs: 20 });
    const leases: InProcessHostLease[] = [];
    const recording: Registry = {
      registerHost: async (host, options) => {
        const lease = await lossy.registerHost(host, options);
        leases.push(lease);
        return lease;
      },
      hosts: () => lossy.hosts(),
      route: (userId, deviceId) => lossy.route(userId, deviceId),
      watch: (handler) => lossy.watch(handler),
      close: () => lossy.close(),
    };
    const fragile = await startEdge(edgeConfig({ PARLEY_EDGE_LEASE_TTL: "200ms" }), logger, {
      registry: recording,
      helloWaitMs: 50,
    });
    try {
      const first = await openSession("mike", "phone", fragile);
      expectCase(await first.down.next(), "ready");
      leases[0]?.suspendKeepAlive(); // the process stalls, as far as the registry can tell
      expect(expectCase(await first.down.next(), "close").reason).toBe(CloseReason.SHUTDOWN);
      expect((await first.down.end())?.code).toBe(Code.Unavailable);
      await expect.poll(() => leases.length).toBe(2);
      const again = await openSession("mike", "phone", fragile);
      expectCase(await again.down.next(), "ready");
      expect((await lossy.route("mike", "phone"))?.hostId).toBe(fragile.hostId);
      again.up.end();
      await again.down.end();
    } finally {
      await fragile.stop();
      await lossy.close();
    }
  });

  it("drains on stop: Drain naming another serving host, then SHUTDOWN (unavailable); the lease is revoked", async () => {
    const leaving = await startEdge(edgeConfig({ PARLEY_EDGE_DRAIN_TIMEOUT: "300ms" }), logger, { registry });
    const { down } = await openSession("karl", "phone", leaving);
    expectCase(await down.next(), "ready");
    expect((await registry.hosts()).map((h) => h.hostId)).toContain(leaving.hostId);
    const stopped = leaving.stop();
    const drain = expectCase(await down.next(), "drain");
    expect(drain.reconnectUrl).toBe(edge.url);
    expect(drain.deadline?.nanos).toBe(300_000_000);
    expect(expectCase(await down.next(), "close").reason).toBe(CloseReason.SHUTDOWN);
    expect((await down.end())?.code).toBe(Code.Unavailable);
    await stopped;
    expect((await registry.hosts()).map((h) => h.hostId)).not.toContain(leaving.hostId);
    expect(await registry.route("karl", "phone")).toBeUndefined();
  });
});
