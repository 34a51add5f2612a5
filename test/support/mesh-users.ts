// Users, devices and conversations on a REAL mesh, through the edge's public API only (tokens from
// the dev issuer, ContactService / ConversationService / DeviceService over HTTP/2, the SDK).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Client, Interceptor, Transport } from "@connectrpc/connect";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type {
  ErrorEvent,
  IncomingMessage,
  ParleyClient,
  ParleyClientOptions,
} from "../../clients/ts/index.ts";
import { createParleyClient } from "../../clients/ts/index.ts";
import { openDevIssuer } from "../../edge/auth/dev-issuer.ts";
import { DEFAULT_JWT_AUDIENCE, DEV_ISSUER, devIssuerKeyPath } from "../../edge/config.ts";
import type { EnvelopeSchema } from "../../gen/parley/common/v1/envelope_pb.ts";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import type { Message, Receipt } from "../../gen/parley/common/v1/message_pb.ts";
import { ContactService } from "../../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../../gen/parley/edge/v1/conversation_service_pb.ts";
import { DeviceService } from "../../gen/parley/edge/v1/device_service_pb.ts";
import type {
  ClientFrameSchema,
  PresenceEvent,
  ServerFrame,
  TypingEvent,
} from "../../gen/parley/edge/v1/frames_pb.ts";
import { HistoryService } from "../../gen/parley/edge/v1/history_service_pb.ts";
import type { SessionRequestSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { SessionService } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { directConversationId } from "../../lib/ids.ts";
import { createLogger } from "../../lib/logging.ts";
import { deviceKeys } from "../../services/key/test-support.ts";
import type { EmbeddedMeshOptions } from "../../tools/mesh/embedded-mesh.ts";
import { startEmbeddedMesh } from "../../tools/mesh/embedded-mesh.ts";
import { mintDevToken } from "../../tools/token/dev-token.ts";
import { clusterProfileRequested, startClusterTestMesh } from "./cluster-mesh.ts";

/** A mesh the helpers below can create users on: where its edge listens, and where its dev issuer's key lives. */
export interface MeshTarget {
  readonly edgeUrl: string;
  readonly dataDir: string;
  /**
   * A few shared HTTP/2 connections (gRPC transports) to the edge: every client created by
   * `createUser` uses one of them round-robin, so 1,000 devices do not open 1,000 connections. Safe
   * because the SDK sets `Authorization` on each call itself (clients/ts/edge-transport.ts), and the
   * edge authenticates per call, not per connection.
   */
  transport(): Transport;
}

export interface TestMesh extends MeshTarget {
  /** Stops the mesh (its services, the edge) and removes its data folder. */
  stop(): Promise<void>;
}

export interface TestMeshOptions {
  /** How many HTTP/2 connections the shared pool opens. Default 8 (the edge allows 1,000 streams on each). */
  readonly connections?: number;
  /** Edge settings over the defaults, e.g. a short `heartbeatIntervalMs` for presence tests. */
  readonly edge?: EmbeddedMeshOptions["edge"];
}

/** A transport pool over `edgeUrl`; `next()` hands them out round-robin. */
export function createTransportPool(edgeUrl: string, size = 8): { next(): Transport } {
  const pool = Array.from({ length: size }, () => createGrpcTransport({ baseUrl: edgeUrl }));
  let i = 0;
  return {
    next() {
      const transport = pool[i % pool.length] as Transport;
      i += 1;
      return transport;
    },
  };
}

/**
 * The embedded mesh in this process, edge on a free port, data in a fresh temp folder, no logs; or,
 * with PARLEY_TEST_PROFILE=cluster, the cluster profile on the real engines (cluster-mesh.ts).
 */
export async function startTestMesh(options: TestMeshOptions = {}): Promise<TestMesh> {
  if (clusterProfileRequested()) return startClusterTestMesh(options);
  const dataDir = mkdtempSync(join(tmpdir(), "parley-test-mesh-"));
  try {
    const mesh = await startEmbeddedMesh({
      dataDir,
      edgeHost: "127.0.0.1",
      edgePort: 0,
      logger: createLogger("test-mesh", "silent"),
      ...(options.edge === undefined ? {} : { edge: options.edge }),
    });
    const pool = createTransportPool(mesh.edgeUrl, options.connections);
    return {
      edgeUrl: mesh.edgeUrl,
      dataDir,
      transport: () => pool.next(),
      async stop() {
        try {
          await mesh.stop();
        } finally {
          rmSync(dataDir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}

/** A MeshTarget for a mesh running elsewhere (a child process): its edge URL and data folder. */
export function meshTarget(edgeUrl: string, dataDir: string, connections = 4): MeshTarget {
  const pool = createTransportPool(edgeUrl, connections);
  return { edgeUrl, dataDir, transport: () => pool.next() };
}

/** An interceptor sending `Authorization: Bearer <token>`, for raw clients of the edge. */
export function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** Typed edge clients with one device's token, on a transport of the shared pool (no SDK logic). */
export interface RawClients {
  readonly session: Client<typeof SessionService>;
  readonly contacts: Client<typeof ContactService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly devices: Client<typeof DeviceService>;
  readonly history: Client<typeof HistoryService>;
}

/** Raw typed clients of the edge as the holder of `token` (a fresh HTTP/2 connection unless `transport` is given). */
export function rawClients(edgeUrl: string, token: string, transport?: Transport): RawClients {
  const authed = withToken(transport ?? createGrpcTransport({ baseUrl: edgeUrl }), token);
  return {
    session: createClient(SessionService, authed),
    contacts: createClient(ContactService, authed),
    conversations: createClient(ConversationService, authed),
    devices: createClient(DeviceService, authed),
    history: createClient(HistoryService, authed),
  };
}

/** The same transport with the bearer token set on every call (unary and streaming). */
function withToken(inner: Transport, token: string): Transport {
  const headers = (init: ConstructorParameters<typeof Headers>[0]) => {
    const h = new Headers(init);
    h.set("authorization", `Bearer ${token}`);
    return h;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      inner.unary(method, signal, timeoutMs, headers(header), input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      inner.stream(method, signal, timeoutMs, headers(header), input, contextValues),
  };
}

export interface TestDevice {
  readonly userId: string;
  readonly deviceId: string;
  readonly token: string;
  /** The SDK client of this device (not connected yet: register listeners, e.g. `collect`, then `connect()`). */
  readonly client: ParleyClient;
  readonly raw: RawClients;
  /** Another SDK client for the same device (a reinstall, a second tab), on the shared pool. */
  newClient(options?: Partial<ParleyClientOptions>): ParleyClient;
}

export interface TestUser {
  readonly userId: string;
  /** In the order given to `createUser`. */
  readonly devices: readonly TestDevice[];
  /** The device with this id (throws when the user has none). */
  device(deviceId: string): TestDevice;
  /** The first device: the one helpers act with. */
  readonly primary: TestDevice;
}

export interface CreateUserOptions {
  readonly displayName?: string;
  /** Token lifetime. Default 1 h. */
  readonly ttlMs?: number;
  /** Passed to every SDK client (e.g. `autoAck: false`, a `store`). */
  readonly client?: Partial<ParleyClientOptions>;
  /** Skip RegisterDevice for these device ids (a token for a device the user never registered). */
  readonly unregistered?: readonly string[];
}

/**
 * A user with devices: a dev token per device, a profile (SetMyProfile) and each device registered
 * with real XEdDSA-signed keys, and an SDK client per device over the shared pool.
 */
export async function createUser(
  mesh: MeshTarget,
  userId: string,
  deviceIds: readonly string[] = ["phone"],
  options: CreateUserOptions = {},
): Promise<TestUser> {
  const devices: TestDevice[] = [];
  for (const deviceId of deviceIds) {
    const { token } = await mintDevToken({
      dataDir: mesh.dataDir,
      userId,
      deviceId,
      ttlMs: options.ttlMs ?? 3_600_000,
    });
    const transport = mesh.transport();
    const raw = rawClients(mesh.edgeUrl, token, transport);
    if (devices.length === 0) {
      await raw.contacts.setMyProfile({ displayName: options.displayName ?? userId });
    }
    if (!options.unregistered?.includes(deviceId)) {
      const keys = deviceKeys({ oneTimePrekeys: 5 });
      await raw.devices.registerDevice({
        displayName: deviceId,
        identityKey: keys.identityKey,
        signedPrekey: keys.signedPrekey,
        lastResortPrekey: keys.lastResortPrekey,
        oneTimePrekeys: keys.oneTimePrekeys,
      });
    }
    const newClient = (overrides: Partial<ParleyClientOptions> = {}) =>
      createParleyClient({
        transport: mesh.transport(),
        token,
        ...options.client,
        ...overrides,
      });
    devices.push({ userId, deviceId, token, raw, client: newClient(), newClient });
  }
  const first = devices[0];
  if (first === undefined) throw new Error("createUser needs at least one device");
  return {
    userId,
    devices,
    primary: first,
    device(deviceId) {
      const found = devices.find((d) => d.deviceId === deviceId);
      if (found === undefined) throw new Error(`${userId} has no device ${deviceId}`);
      return found;
    },
  };
}

/**
 * A dev token for any user and device, valid from `now` (default: the current time) for `ttlMs`:
 * tokens already expired (`now` in the past) or of a device the user never registered. Assumes the
 * default issuer and audience (no PARLEY_EDGE_JWT_* variables).
 */
export async function mintToken(
  mesh: Pick<MeshTarget, "dataDir">,
  userId: string,
  deviceId: string,
  options: { readonly ttlMs?: number; readonly now?: Date } = {},
): Promise<string> {
  const issuer = await openDevIssuer(devIssuerKeyPath(mesh.dataDir));
  return issuer.mint({
    userId,
    deviceId,
    ttlMs: options.ttlMs ?? 3_600_000,
    issuer: DEV_ISSUER,
    audience: DEFAULT_JWT_AUDIENCE,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
}

/** Runs `task` over `items` with at most `limit` at a time, in order of start. */
export async function inBatches<T, R>(
  items: readonly T[],
  limit: number,
  task: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** `a` asks, `b` accepts: an ACCEPTED connection. Returns their direct conversation's id. */
export async function connectUsers(a: TestUser, b: TestUser): Promise<string> {
  await a.primary.raw.contacts.requestConnection({ otherUserId: b.userId });
  const accepted = await b.primary.raw.contacts.acceptConnection({ otherUserId: a.userId });
  const id = directConversationId(a.userId, b.userId);
  if (accepted.connection?.conversationId !== id) {
    throw new Error(`accepting gave conversation ${accepted.connection?.conversationId}, expected ${id}`);
  }
  // No wait for the sender's view: a send right after the accept must be taken (the sender asks
  // the connection service when its view lags), and the tests' first sends check that it is.
  return id;
}

/**
 * A group owned by `owner` with `members`. Each member must be an ACCEPTED connection of the owner:
 * every member asks the owner (one request each, far under the 100 requests/hour limit) and the
 * owner accepts (accepts are not rate-limited). Returns the group's conversation id.
 */
export async function createGroup(
  owner: TestUser,
  members: readonly TestUser[],
  name = "group",
  concurrency = 32,
): Promise<string> {
  await inBatches(members, concurrency, async (member) => {
    await member.primary.raw.contacts.requestConnection({ otherUserId: owner.userId });
    await owner.primary.raw.contacts.acceptConnection({ otherUserId: member.userId });
  });
  const created = await owner.primary.raw.conversations.createGroup({
    name,
    memberUserIds: members.map((m) => m.userId),
    requestId: crypto.randomUUID(),
  });
  const id = created.conversation?.conversationId;
  if (id === undefined || id === "") throw new Error("CreateGroup returned no conversation id");
  return id;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The stand-in "ciphertext" for `text` to one device: readable, so tests can tell who got what. */
export function fakeCiphertext(text: string, to?: { userId: string; deviceId: string }): Uint8Array {
  return encoder.encode(to === undefined ? text : `${text}|to:${to.userId}/${to.deviceId}`);
}

/** What `fakeCiphertext` encoded: the text, and for pairwise payloads the addressee. */
export function readCiphertext(message: Message): { text: string; to?: string } {
  const [text = "", to] = decoder.decode(message.ciphertext).split("|to:");
  return to === undefined ? { text } : { text, to };
}

/**
 * A pairwise envelope for a 1:1 (or small group) conversation: one ciphertext for every device of
 * every member except the sending device (the sender's other devices included), as the sender
 * service requires (anything else is DEVICE_LIST_MISMATCH).
 */
export function pairwiseEnvelope(
  from: TestDevice,
  members: readonly TestUser[],
  text: string,
  kind: ContentKind = ContentKind.TEXT,
): MessageInitShape<typeof EnvelopeSchema> {
  const recipients = members
    .map((member) => ({
      userId: member.userId,
      devices: member.devices
        .filter((d) => !(d.userId === from.userId && d.deviceId === from.deviceId))
        .map((d) => ({ deviceId: d.deviceId, ciphertext: fakeCiphertext(text, d) })),
    }))
    .filter((r) => r.devices.length > 0);
  return { kind, payload: { case: "perDevice", value: { recipients } } };
}

/** A shared envelope (one ciphertext under the sender key), as groups use. */
export function sharedEnvelope(
  text: string,
  kind: ContentKind = ContentKind.TEXT,
): MessageInitShape<typeof EnvelopeSchema> {
  return { kind, payload: { case: "shared", value: { ciphertext: fakeCiphertext(text) } } };
}

/** Everything one SDK client surfaced, in arrival order, with waits for the assertions. */
export interface Collected {
  readonly messages: IncomingMessage[];
  readonly receipts: Receipt[];
  readonly typing: TypingEvent[];
  readonly presence: PresenceEvent[];
  readonly errors: ErrorEvent[];
  /** Texts (readCiphertext) of the messages of one conversation (all when omitted), in order shown. */
  texts(conversationId?: string): string[];
  /** Resolves once `predicate` holds (checked after every event); rejects after `timeoutMs`. */
  until(predicate: (c: Collected) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  /** Until at least `count` messages (of `conversationId` if given) were shown. */
  untilMessages(count: number, conversationId?: string, timeoutMs?: number): Promise<void>;
  /** Stops listening. */
  dispose(): void;
}

/** Records every onMessage (and receipt, typing, presence, error) of `client`. Call before `connect()`. */
export function collect(client: ParleyClient): Collected {
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const waiter of [...waiters]) waiter();
  };
  const record =
    <T>(into: T[]) =>
    (value: T) => {
      into.push(value);
      notify();
    };
  const collected: Collected = {
    messages: [],
    receipts: [],
    typing: [],
    presence: [],
    errors: [],
    texts(conversationId) {
      return collected.messages
        .filter((m) => conversationId === undefined || m.message.conversationId === conversationId)
        .map((m) => readCiphertext(m.message).text);
    },
    until(predicate, timeoutMs = 15_000, what = "the expected events") {
      if (predicate(collected)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => {
          if (predicate(collected)) {
            done();
            resolve();
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(
            new Error(
              `timed out after ${timeoutMs} ms waiting for ${what}: ${collected.messages.length} messages, ${collected.receipts.length} receipts, errors: ${collected.errors.map((e) => e.error.message).join("; ")}`,
            ),
          );
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
      });
    },
    untilMessages(count, conversationId, timeoutMs) {
      return collected.until(
        (c) =>
          c.messages.filter(
            (m) => conversationId === undefined || m.message.conversationId === conversationId,
          ).length >= count,
        timeoutMs,
        `${count} messages`,
      );
    },
    dispose() {
      for (const off of offs) off();
      waiters.clear();
    },
  };
  const offs = [
    client.onMessage(record(collected.messages)),
    client.onReceipt(record(collected.receipts)),
    client.onTyping(record(collected.typing)),
    client.onPresence(record(collected.presence)),
    client.onError(record(collected.errors)),
  ];
  return collected;
}

type ClientFrameInit = MessageInitShape<typeof ClientFrameSchema>;

/** A Session stream driven frame by frame, without the SDK: for protocol-level assertions. */
export interface RawSession {
  /** Every server frame received so far, in order. */
  readonly frames: ServerFrame[];
  /** Sends a client frame (frame_id defaults to a counter). */
  send(frame: Omit<ClientFrameInit, "frameId"> & { frameId?: bigint }): bigint;
  /** Sends a raw SessionRequest (e.g. one without a frame). */
  sendRequest(request: MessageInitShape<typeof SessionRequestSchema>): void;
  /** The first frame (from the start of the stream) matching `predicate`, waiting up to `timeoutMs`. */
  next(predicate: (frame: ServerFrame) => boolean, timeoutMs?: number): Promise<ServerFrame>;
  /** Resolves when the stream ended: undefined when OK, else the error it ended with. */
  readonly ended: Promise<ConnectError | undefined>;
  /** Ends the client's side (half-close). */
  end(): void;
  /** Cancels the stream (RST_STREAM), as a client that goes away. */
  abort(): void;
}

/** Opens `SessionService.Session` on `session` (a raw client with a token). */
export function openRawSession(session: Client<typeof SessionService>): RawSession {
  const requests: MessageInitShape<typeof SessionRequestSchema>[] = [];
  let wakeRequests: (() => void) | undefined;
  let requestsEnded = false;
  const controller = new AbortController();
  const frames: ServerFrame[] = [];
  const listeners = new Set<() => void>();
  let nextId = 1n;
  let finished = false;
  async function* input() {
    for (;;) {
      const request = requests.shift();
      if (request !== undefined) {
        yield request;
        continue;
      }
      if (requestsEnded) return;
      await new Promise<void>((resolve) => {
        wakeRequests = resolve;
      });
    }
  }
  const push = (request: MessageInitShape<typeof SessionRequestSchema>) => {
    requests.push(request);
    const wake = wakeRequests;
    wakeRequests = undefined;
    wake?.();
  };
  const ended = (async () => {
    try {
      for await (const response of session.session(input(), { signal: controller.signal })) {
        if (response.frame !== undefined) frames.push(response.frame);
        for (const listener of listeners) listener();
      }
      return undefined;
    } catch (err) {
      return ConnectError.from(err);
    } finally {
      finished = true;
      for (const listener of listeners) listener();
    }
  })();
  return {
    frames,
    send(frame) {
      const frameId = frame.frameId ?? nextId++;
      push({ frame: { ...frame, frameId } as ClientFrameInit });
      return frameId;
    },
    sendRequest: push,
    next(predicate, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = frames.find(predicate);
          if (found !== undefined) {
            done();
            resolve(found);
          } else if (finished) {
            done();
            reject(
              new Error(
                `the stream ended without the expected frame; got ${frames.map((f) => f.body.case).join(",")}`,
              ),
            );
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(
            new Error(
              `no expected frame within ${timeoutMs} ms; got ${frames.map((f) => f.body.case).join(",")}`,
            ),
          );
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    ended,
    end() {
      requestsEnded = true;
      const wake = wakeRequests;
      wakeRequests = undefined;
      wake?.();
    },
    abort() {
      controller.abort();
    },
  };
}
