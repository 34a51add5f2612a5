// The whole mesh as `npm start` runs it: one process, every service answering over real sockets.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { ConnectionState } from "../gen/parley/connection/v1/connection_pb.ts";
import { ConnectionService } from "../gen/parley/connection/v1/connection_service_pb.ts";
import { DeliveryService } from "../gen/parley/delivery/v1/delivery_service_pb.ts";
import { ContactService } from "../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../gen/parley/edge/v1/conversation_service_pb.ts";
import { HistoryService as EdgeHistoryService } from "../gen/parley/edge/v1/history_service_pb.ts";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { KeyService } from "../gen/parley/key/v1/key_service_pb.ts";
import { SenderService, SendMessageRequestSchema } from "../gen/parley/sender/v1/sender_service_pb.ts";
import { closeChannel, createGrpcClient } from "../lib/grpc/client.ts";
import { fromGrpcError } from "../lib/grpc/grpc-error.ts";
import { directConversationId } from "../lib/ids.ts";
import { mintDevToken } from "../tools/token/dev-token.ts";
import type { MeshProcess } from "./support/child-process.ts";
import { startNodeProcess } from "./support/child-process.ts";
import { healthStatus, reflectedServices } from "./support/grpc-probes.ts";

const internalServices = {
  connection: ConnectionService,
  key: KeyService,
  sender: SenderService,
  history: HistoryService,
  delivery: DeliveryService,
};

let mesh: MeshProcess;
let dataDir: string;
let edgeUrl: string;
let token: string;
let bobToken: string;
const addresses: Record<string, string> = {};

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-mesh-"));
  mesh = startNodeProcess("tools/mesh/start-embedded.ts", {
    PARLEY_EDGE_PORT: "0",
    PARLEY_DATA_DIR: dataDir,
    // info: one access line per internal RPC, to tell which calls reached an internal service.
    PARLEY_LOG_LEVEL: "info",
  });
  edgeUrl = (await mesh.waitFor(/edge: (http:\/\/\S+)/))[1] ?? "";
  for (const name of Object.keys(internalServices)) {
    addresses[name] = (await mesh.waitFor(new RegExp(`${name}: (\\S+) \\(gRPC\\)`)))[1] ?? "";
  }
  // Signed by the dev issuer the mesh's edge trusts: the key in the mesh's data folder.
  token = (await mintDevToken({ dataDir, userId: "alice", deviceId: "phone", ttlMs: 600_000 })).token;
  bobToken = (await mintDevToken({ dataDir, userId: "bob", deviceId: "laptop", ttlMs: 600_000 })).token;
});

afterAll(async () => {
  await mesh?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

describe("internal services", () => {
  it.each(Object.entries(internalServices))("%s answers health checks SERVING", async (name, service) => {
    const address = addresses[name] ?? "";
    expect(await healthStatus(address)).toBe(1);
    expect(await healthStatus(address, service.typeName)).toBe(1);
  });

  it.each(Object.entries(internalServices))(
    "%s lists its service through reflection",
    async (name, service) => {
      expect(await reflectedServices(addresses[name] ?? "")).toEqual([service.typeName]);
    },
  );

  it("history answers Sync for a device with an empty inbox", async () => {
    const client = createGrpcClient(HistoryService, addresses.history ?? "");
    try {
      const page = await client.sync({ device: { userId: "alice", deviceId: "phone" } });
      expect(page.items).toEqual([]);
      expect(page.more).toBe(false);
    } finally {
      closeChannel(client);
    }
  });

  it("validates requests before the handler: an oversize payload is invalid_argument", async () => {
    const client = createGrpcClient(SenderService, addresses.sender ?? "");
    const request = create(SendMessageRequestSchema, {
      sender: { userId: "alice", deviceId: "phone" },
      conversationId: "0190e8f4-1c7b-7000-8000-000000000001",
      clientMessageId: "0190e8f4-1c7b-7000-8000-000000000002",
      envelope: { kind: 1, payload: { case: "shared", value: { ciphertext: new Uint8Array(4097) } } },
    });
    try {
      const parley = fromGrpcError(
        await client.sendMessage(request).then(
          () => undefined,
          (e: unknown) => e,
        ),
      );
      expect(parley.code).toBe("invalid_argument");
      expect(parley.violations.map((v) => v.field)).toEqual(["envelope.shared.ciphertext"]);
    } finally {
      closeChannel(client);
    }
  });
});

/** Sends the dev token, as every client of the edge must. */
const authenticate: Interceptor = (next) => (req) => {
  req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};

/** The internal RPCs the mesh logged so far (one access line each), e.g. `/parley.x.v1.S/M`. */
function internalCallsLogged(): string[] {
  return [...mesh.output().matchAll(/"method":"(\/parley\.[^"]+)"/g)].map((m) => m[1] ?? "");
}

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  return err as ConnectError;
}

describe("edge", () => {
  const transports: Record<string, () => Transport> = {
    "Connect over HTTP/1.1": () =>
      createConnectTransport({ baseUrl: edgeUrl, httpVersion: "1.1", interceptors: [authenticate] }),
    "Connect over HTTP/2": () =>
      createConnectTransport({ baseUrl: edgeUrl, httpVersion: "2", interceptors: [authenticate] }),
    "gRPC over HTTP/2": () => createGrpcTransport({ baseUrl: edgeUrl, interceptors: [authenticate] }),
    "gRPC-Web over HTTP/1.1": () =>
      createGrpcWebTransport({ baseUrl: edgeUrl, httpVersion: "1.1", interceptors: [authenticate] }),
  };
  const connect = () => transports["Connect over HTTP/1.1"]?.() as Transport;

  it.each(Object.entries(transports))("Locate answers over %s", async (_name, transport) => {
    const response = await createClient(SessionService, transport()).locate({});
    expect(response.edgeUrl).toBe(edgeUrl);
    expect(response.hostId).not.toBe("");
  });

  it("refuses calls without a token: unauthenticated, TOKEN_MISSING", async () => {
    const anonymous = createConnectTransport({ baseUrl: edgeUrl, httpVersion: "1.1" });
    const err = await failure(createClient(SessionService, anonymous).locate({}));
    expect(err.code).toBe(Code.Unauthenticated);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("TOKEN_MISSING");
    expect(err.rawMessage).toContain("Authorization: Bearer <token>");
  });

  it("refuses an invalid request with invalid_argument and field violations", async () => {
    const client = createClient(SessionService, connect());
    const err = await failure(client.send({}));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("VALIDATION_FAILED");
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["message"]);
  });

  it("passes SetTyping to delivery as the caller: a conversation they are not in is not found", async () => {
    const client = createClient(SessionService, transports["gRPC over HTTP/2"]?.() as Transport);
    const err = await failure(
      client.setTyping({ typing: { conversationId: "0190e8f4-1c7b-7000-8000-000000000001", typing: true } }),
    );
    expect(err.code).toBe(Code.NotFound);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("CONVERSATION_NOT_FOUND");
  });

  describe("passthrough to internal services", () => {
    const as = (bearerToken: string) =>
      createConnectTransport({
        baseUrl: edgeUrl,
        httpVersion: "1.1",
        interceptors: [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${bearerToken}`);
            return next(req);
          },
        ],
      });

    it("routes ContactService to the connection service, acting as each token's user", async () => {
      const alice = createClient(ContactService, as(token));
      const bob = createClient(ContactService, as(bobToken));
      expect((await bob.setMyProfile({ displayName: "Bob" })).profile).toMatchObject({
        userId: "bob",
        displayName: "Bob",
      });
      const requested = await alice.requestConnection({ otherUserId: "bob" });
      expect(requested.connection).toMatchObject({
        otherUserId: "bob",
        state: ConnectionState.PENDING_OUTGOING,
      });
      const incoming = await bob.listConnections({});
      expect(incoming.connections.map((c) => [c.otherUserId, c.state])).toEqual([
        ["alice", ConnectionState.PENDING_INCOMING],
      ]);
      const accepted = await bob.acceptConnection({ otherUserId: "alice" });
      expect(accepted.connection).toMatchObject({ otherUserId: "alice", state: ConnectionState.ACCEPTED });
      expect(accepted.connection?.conversationId).toBe(directConversationId("alice", "bob"));
      expect(internalCallsLogged()).toEqual(
        expect.arrayContaining([
          "/parley.connection.v1.ConnectionService/UpsertProfile",
          "/parley.connection.v1.ConnectionService/RequestConnection",
        ]),
      );
    });

    it("passes the internal service's errors through: code, message, reason", async () => {
      const err = await failure(
        createClient(ContactService, connect()).getProfile({ otherUserId: "nobody" }),
      );
      expect(err.code).toBe(Code.NotFound);
      expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("USER_NOT_FOUND");
      // A rule the edge schema cannot express (the caller among the members), enforced internally.
      const conversations = createClient(ConversationService, connect());
      const own = await failure(conversations.createGroup({ name: "team", memberUserIds: ["bob", "alice"] }));
      expect(own.code).toBe(Code.InvalidArgument);
    });

    it("reaches history as the token's device: another device's cursor is refused", async () => {
      const history = createClient(EdgeHistoryService, connect());
      const page = await history.sync({});
      expect(page.more).toBe(false);
      // A cursor is bound to the device it was issued to; the edge set the device from the token.
      const foreign = await failure(history.sync({ cursor: new Uint8Array(17).fill(1) }));
      expect(foreign.code).toBe(Code.InvalidArgument);
      expect(foreign.findDetails(ErrorInfoSchema)[0]?.reason).toBe("INVALID_CURSOR");
    });

    it("refuses a call without a valid token before it reaches the internal service", async () => {
      const anonymous = createConnectTransport({ baseUrl: edgeUrl, httpVersion: "1.1" });
      for (const transport of [anonymous, as(`${token.slice(0, -4)}AAAA`)]) {
        const err = await failure(createClient(ContactService, transport).blockUser({ otherUserId: "bob" }));
        expect(err.code).toBe(Code.Unauthenticated);
      }
      // A call that does reach the connection service, logged after anything logged before it.
      await createClient(ContactService, connect()).getProfile({ otherUserId: "alice" });
      await expect.poll(internalCallsLogged).toContain("/parley.connection.v1.ConnectionService/GetProfile");
      expect(internalCallsLogged()).not.toContain("/parley.connection.v1.ConnectionService/BlockUser");
    });
  });

  it("serves plain HTTP liveness", async () => {
    const response = await fetch(`${edgeUrl}/healthz`);
    expect(response.status).toBe(200);
  });
});
