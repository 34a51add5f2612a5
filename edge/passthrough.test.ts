// The edge in front of fake internal services (real gRPC servers on port 0): routing, the caller
// taken from the token, error pass-through, deadlines, and refusal before any internal call.
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type { CallContext } from "nice-grpc";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { DeviceAddressSchema } from "../gen/parley/common/v1/address_pb.ts";
import {
  ConnectionService,
  GetProfileResponseSchema as InternalGetProfileResponseSchema,
} from "../gen/parley/connection/v1/connection_service_pb.ts";
import {
  ContactService,
  GetProfileRequestSchema,
  SetMyProfileRequestSchema,
} from "../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../gen/parley/edge/v1/conversation_service_pb.ts";
import { DeviceService, GetPrekeyCountRequestSchema } from "../gen/parley/edge/v1/device_service_pb.ts";
import { HistoryService as EdgeHistoryService } from "../gen/parley/edge/v1/history_service_pb.ts";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { KeyService } from "../gen/parley/key/v1/key_service_pb.ts";
import { ERROR_DOMAIN, failedPrecondition, internal } from "../lib/errors.ts";
import type { GrpcServer } from "../lib/grpc/server.ts";
import { createGrpcServer, grpcService } from "../lib/grpc/server.ts";
import { unimplementedService } from "../lib/grpc/unimplemented.ts";
import { createLogger } from "../lib/logging.ts";
import { openDevIssuer } from "./auth/dev-issuer.ts";
import { AuthReason } from "./auth/verifier.ts";
import type { EdgeConfig } from "./config.ts";
import {
  DEFAULT_JWT_AUDIENCE,
  DEV_ISSUER,
  devIssuerAuthConfig,
  devIssuerKeyPath,
  loadEdgeConfig,
} from "./config.ts";
import {
  CALLER_FIELD_NUMBER,
  fieldProblems,
  planPassthrough,
  toEdgeResponse,
  toInternalRequest,
} from "./passthrough.ts";
import { RENAMED_METHODS } from "./routes.ts";
import type { RunningEdge } from "./server.ts";
import { startEdge } from "./server.ts";

const logger = createLogger("test", "silent");

/** Every request the fake internal services received, by method. */
const received: Array<{ method: string; request: MessageShape<DescMessage> }> = [];
const aborted: string[] = [];
const record = (method: string, request: MessageShape<DescMessage>) => received.push({ method, request });
const receivedBy = (method: string) => received.filter((r) => r.method === method).map((r) => r.request);

let dir: string;
let internalServer: GrpcServer;
let edge: RunningEdge;
let unreachableEdge: RunningEdge;
let token: string;
let expiredToken: string;

function edgeConfig(addresses: Partial<EdgeConfig>): EdgeConfig {
  return { ...loadEdgeConfig({ PARLEY_EDGE_PORT: "0" }), ...devIssuerAuthConfig(dir), ...addresses };
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "parley-edge-"));
  internalServer = createGrpcServer({
    name: "fake-internal",
    logger,
    services: [
      grpcService(ConnectionService, {
        ...unimplementedService(ConnectionService),
        async getProfile(request) {
          record("GetProfile", request);
          return {
            profile: { userId: request.otherUserId, displayName: "Bob" },
            // A field this edge does not know (a newer internal contract): never sent on.
            $unknown: [{ no: 99, wireType: WireType.Varint, data: new Uint8Array([1]) }],
          };
        },
        async upsertProfile(request) {
          record("UpsertProfile", request);
          return { profile: { userId: request.userId, displayName: request.displayName } };
        },
        async listConnections(request, ctx: CallContext) {
          record("ListConnections", request);
          // Answers only when cancelled: the edge must pass the client's deadline on.
          await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
          aborted.push("ListConnections");
          return {};
        },
        async blockUser(request) {
          record("BlockUser", request);
          throw failedPrecondition("USER_BLOCKED", "you blocked bob: unblock them first", {
            metadata: { otherUserId: request.otherUserId },
            violations: [{ field: "other_user_id", description: "is blocked", reason: "BLOCKED" }],
            retryDelayMs: 1500,
          });
        },
        async rejectConnection(request) {
          record("RejectConnection", request);
          throw new Error("db password=hunter2 at 10.0.0.3");
        },
        async deleteConnection(request) {
          record("DeleteConnection", request);
          throw internal("STORE_DOWN", "cassandra at 10.1.2.3 timed out");
        },
      }),
      grpcService(KeyService, {
        ...unimplementedService(KeyService),
        async getPrekeyCount(request) {
          record("GetPrekeyCount", request);
          return { oneTimePrekeyCount: 7, lowWatermark: 10, maxOneTimePrekeys: 1000 };
        },
      }),
      grpcService(HistoryService, {
        ...unimplementedService(HistoryService),
        async sync(request) {
          record("Sync", request);
          return { nextCursor: request.cursor, more: false };
        },
      }),
    ],
  });
  const address = `127.0.0.1:${await internalServer.listen("127.0.0.1", 0)}`;
  edge = await startEdge(
    edgeConfig({ connectionAddress: address, keyAddress: address, historyAddress: address }),
    logger,
  );
  const nowhere = `127.0.0.1:${await closedPort()}`;
  unreachableEdge = await startEdge(
    edgeConfig({ connectionAddress: nowhere, keyAddress: nowhere, historyAddress: nowhere }),
    logger,
  );
  const issuer = await openDevIssuer(devIssuerKeyPath(dir));
  const claims = { userId: "alice", deviceId: "phone", issuer: DEV_ISSUER, audience: DEFAULT_JWT_AUDIENCE };
  token = await issuer.mint({ ...claims, ttlMs: 600_000 });
  expiredToken = await issuer.mint({ ...claims, ttlMs: 60_000, now: new Date(Date.now() - 3_600_000) });
});

afterAll(async () => {
  await edge?.stop();
  await unreachableEdge?.stop();
  await internalServer?.shutdown(1_000);
  rmSync(dir, { recursive: true, force: true });
});

const bearer =
  (value: string | null): Interceptor =>
  (next) =>
  (req) => {
    if (value !== null) req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };

function transport(bearerToken: string | null = token, target: RunningEdge = edge): Transport {
  return createConnectTransport({
    baseUrl: target.url,
    httpVersion: "1.1",
    interceptors: [bearer(bearerToken)],
  });
}

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  return err as ConnectError;
}

/** A request with field 1 (the internal caller field) smuggled in as an unknown field. */
function withSmuggledField1<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
  field1: Uint8Array,
) {
  const extra = new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(field1).finish();
  return fromBinary(schema, new Uint8Array([...toBinary(schema, message), ...extra]));
}

describe("edge passthrough", () => {
  it("forwards a ContactService call as the token's user and maps the response", async () => {
    const response = await createClient(ContactService, transport()).getProfile({ otherUserId: "bob" });
    expect(response.profile?.displayName).toBe("Bob");
    expect(response.$unknown).toBeUndefined();
    const [request] = receivedBy("GetProfile");
    expect(request).toMatchObject({ userId: "alice", otherUserId: "bob" });
  });

  it("forwards renamed methods (SetMyProfile -> UpsertProfile)", async () => {
    const response = await createClient(
      ContactService,
      createGrpcTransport({ baseUrl: edge.url, interceptors: [bearer(token)] }),
    ).setMyProfile({
      displayName: "Alice",
    });
    expect(response.profile).toMatchObject({ userId: "alice", displayName: "Alice" });
    expect(receivedBy("UpsertProfile")).toEqual([
      expect.objectContaining({ userId: "alice", displayName: "Alice" }),
    ]);
  });

  it("sets the calling device on DeviceService and HistoryService requests", async () => {
    const count = await createClient(DeviceService, transport()).getPrekeyCount({});
    expect(count.oneTimePrekeyCount).toBe(7);
    const sync = await createClient(EdgeHistoryService, transport()).sync({ cursor: new Uint8Array([1, 2]) });
    expect(sync.nextCursor).toEqual(new Uint8Array([1, 2]));
    for (const method of ["GetPrekeyCount", "Sync"]) {
      expect(receivedBy(method)[0]).toMatchObject({ device: { userId: "alice", deviceId: "phone" } });
    }
  });

  it("ignores a caller smuggled into the request as field 1", async () => {
    const mallory = new TextEncoder().encode("mallory");
    await createClient(ContactService, transport()).getProfile(
      withSmuggledField1(
        GetProfileRequestSchema,
        create(GetProfileRequestSchema, { otherUserId: "carol" }),
        mallory,
      ),
    );
    expect(receivedBy("GetProfile").at(-1)).toMatchObject({ userId: "alice", otherUserId: "carol" });

    const device = toBinary(
      DeviceAddressSchema,
      create(DeviceAddressSchema, { userId: "mallory", deviceId: "x" }),
    );
    await createClient(DeviceService, transport()).getPrekeyCount(
      withSmuggledField1(GetPrekeyCountRequestSchema, create(GetPrekeyCountRequestSchema), device),
    );
    expect(receivedBy("GetPrekeyCount").at(-1)).toMatchObject({
      device: { userId: "alice", deviceId: "phone" },
    });
  });

  it("passes an internal error through unchanged: code, message, reason, metadata, violations, retry", async () => {
    const err = await failure(createClient(ContactService, transport()).blockUser({ otherUserId: "bob" }));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toBe("you blocked bob: unblock them first");
    expect(err.findDetails(ErrorInfoSchema)).toEqual([
      expect.objectContaining({
        reason: "USER_BLOCKED",
        domain: ERROR_DOMAIN,
        metadata: { otherUserId: "bob" },
      }),
    ]);
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations).toEqual([
      expect.objectContaining({ field: "other_user_id", description: "is blocked", reason: "BLOCKED" }),
    ]);
    expect(err.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds).toBe(1n);
  });

  it("passes unimplemented through, naming the internal method", async () => {
    const err = await failure(
      createClient(ConversationService, transport()).getConversation({
        conversationId: "0190e8f4-1c7b-7000-8000-000000000001",
      }),
    );
    expect(err.code).toBe(Code.Unimplemented);
    expect(err.rawMessage).toBe(
      "parley.connection.v1.ConnectionService/GetConversation is not implemented yet",
    );
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("NOT_IMPLEMENTED");
  });

  it("turns internal failures into the generic internal error, leaking nothing", async () => {
    const client = createClient(ContactService, transport());
    // Started one at a time: a call started early would reject before anyone awaits it.
    for (const call of [
      () => client.rejectConnection({ otherUserId: "bob" }),
      () => client.deleteConnection({ otherUserId: "bob" }),
    ]) {
      const err = await failure(call());
      expect(err.code).toBe(Code.Internal);
      expect(err.rawMessage).toBe("internal error");
      expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("INTERNAL");
      expect(JSON.stringify(err)).not.toMatch(/hunter2|10\.\d|cassandra/);
    }
  });

  it("passes the client's deadline on: the internal call is cancelled when it passes", async () => {
    const err = await failure(
      createClient(ContactService, transport()).listConnections({}, { timeoutMs: 300 }),
    );
    expect(err.code).toBe(Code.DeadlineExceeded);
    await expect.poll(() => aborted).toContain("ListConnections");
  });

  it("answers unavailable, with a generic message, when the internal service is unreachable", async () => {
    const err = await failure(
      createClient(DeviceService, transport(token, unreachableEdge)).getPrekeyCount({}),
    );
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toBe("a backing service is unavailable: retry with backoff");
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("SERVICE_UNAVAILABLE");
    expect(err.rawMessage).not.toContain("127.0.0.1");
  });

  it("validates the edge request after authentication, before any internal call", async () => {
    const before = received.length;
    const err = await failure(createClient(ConversationService, transport()).createGroup({ name: "g" }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("VALIDATION_FAILED");
    expect(received.length).toBe(before);
  });
});

describe("edge authentication", () => {
  it.each([
    ["no token", null, AuthReason.TOKEN_MISSING],
    ["an expired token", "expired", AuthReason.TOKEN_EXPIRED],
    ["a garbled token", "not-a-jwt", AuthReason.TOKEN_INVALID],
  ])("refuses a call with %s before it reaches the internal service", async (_name, which, reason) => {
    const before = received.length;
    const bearerToken = which === "expired" ? expiredToken : which;
    const err = await failure(
      createClient(ContactService, transport(bearerToken)).getProfile({ otherUserId: "bob" }),
    );
    expect(err.code).toBe(Code.Unauthenticated);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe(reason);
    expect(received.length).toBe(before);
  });

  it("authenticates before validating: an invalid request without a token is unauthenticated", async () => {
    const err = await failure(createClient(ConversationService, transport(null)).createGroup({}));
    expect(err.code).toBe(Code.Unauthenticated);
  });

  it("requires a token for Locate too", async () => {
    const err = await failure(createClient(SessionService, transport(null)).locate({}));
    expect(err.code).toBe(Code.Unauthenticated);
    expect((await createClient(SessionService, transport()).locate({})).edgeUrl).toBe(edge.url);
  });
});

describe("passthrough contracts", () => {
  const pairs = [
    [ContactService.typeName, ContactService, ConnectionService, RENAMED_METHODS.contact],
    [ConversationService.typeName, ConversationService, ConnectionService, {}],
    [DeviceService.typeName, DeviceService, KeyService, {}],
    [EdgeHistoryService.typeName, EdgeHistoryService, HistoryService, {}],
  ] as const;
  const numbers = (desc: DescMessage) => desc.fields.map((f) => f.number).sort((a, b) => a - b);

  it.each(pairs)(
    "%s lines up with its internal service exactly",
    (_name, edgeService, internalService, names) => {
      const routes = planPassthrough(edgeService, internalService, names);
      expect(routes.map((r) => r.edge.name)).toEqual(edgeService.methods.map((m) => m.name));
      for (const route of routes) {
        // Stricter than what the edge needs to work: flags any field added on one side only, so a
        // contract change decides on purpose whether clients see it.
        expect(numbers(route.internal.input)).toEqual([CALLER_FIELD_NUMBER, ...numbers(route.edge.input)]);
        expect(numbers(route.internal.output)).toEqual(numbers(route.edge.output));
        expect(fieldProblems(route.internal.output, route.edge.output)).toEqual([]);
      }
    },
  );

  it("refuses services that do not line up, listing why", () => {
    expect(() => planPassthrough(ContactService, KeyService)).toThrow(
      /parley.edge.v1.ContactService\/SetMyProfile: parley.key.v1.KeyService has no method SetMyProfile/,
    );
    expect(fieldProblems(SetMyProfileRequestSchema, GetProfileRequestSchema)).toEqual([
      expect.stringContaining("parley.edge.v1.SetMyProfileRequest.display_name is [display_name scalar"),
      expect.stringContaining("parley.edge.v1.SetMyProfileRequest.avatar_url (3) has no field 3"),
    ]);
  });

  it("copies no unknown field either way", () => {
    const [route] = planPassthrough(ContactService, ConnectionService, RENAMED_METHODS.contact).filter(
      (r) => r.edge.name === "GetProfile",
    );
    if (route === undefined) throw new Error("no GetProfile route");
    const extra = new BinaryWriter().tag(9, WireType.Varint).uint32(1).finish();
    const request = fromBinary(
      GetProfileRequestSchema,
      new Uint8Array([
        ...toBinary(GetProfileRequestSchema, create(GetProfileRequestSchema, { otherUserId: "bob" })),
        ...extra,
      ]),
    );
    expect(request.$unknown).toHaveLength(1);
    const device = create(DeviceAddressSchema, { userId: "alice", deviceId: "phone" });
    const internalRequest = toInternalRequest(route, request, device);
    expect(internalRequest).toMatchObject({ userId: "alice", otherUserId: "bob" });
    expect(internalRequest.$unknown).toBeUndefined();

    const response = create(InternalGetProfileResponseSchema, {
      profile: { userId: "bob" },
      $unknown: [{ no: 9, wireType: WireType.Varint, data: new Uint8Array([1]) }],
    });
    const edgeResponse = toEdgeResponse(route, response);
    expect(edgeResponse.$typeName).toBe("parley.edge.v1.GetProfileResponse");
    expect(edgeResponse.$unknown).toBeUndefined();
  });
});
