// The whole mesh as `npm start` runs it: one process, every service answering over real sockets.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import type { Transport } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { ConnectionService } from "../gen/parley/connection/v1/connection_service_pb.ts";
import { DeliveryService } from "../gen/parley/delivery/v1/delivery_service_pb.ts";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { HistoryService } from "../gen/parley/history/v1/history_service_pb.ts";
import { KeyService } from "../gen/parley/key/v1/key_service_pb.ts";
import { SenderService, SendMessageRequestSchema } from "../gen/parley/sender/v1/sender_service_pb.ts";
import { closeChannel, createGrpcClient } from "../lib/grpc/client.ts";
import { fromGrpcError } from "../lib/grpc/grpc-error.ts";
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
const addresses: Record<string, string> = {};

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-mesh-"));
  mesh = startNodeProcess("tools/mesh/start-embedded.ts", {
    PARLEY_EDGE_PORT: "0",
    PARLEY_DATA_DIR: dataDir,
    PARLEY_LOG_LEVEL: "warn",
  });
  edgeUrl = (await mesh.waitFor(/edge: (http:\/\/\S+)/))[1] ?? "";
  for (const name of Object.keys(internalServices)) {
    addresses[name] = (await mesh.waitFor(new RegExp(`${name}: (\\S+) \\(gRPC\\)`)))[1] ?? "";
  }
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

  it("answers unimplemented RPCs with a message naming the method", async () => {
    const client = createGrpcClient(HistoryService, addresses.history ?? "");
    try {
      const err = await client.sync({ device: { userId: "alice", deviceId: "phone" } }).then(
        () => undefined,
        (e: unknown) => e,
      );
      const parley = fromGrpcError(err);
      expect(parley.code).toBe("unimplemented");
      expect(parley.reason).toBe("NOT_IMPLEMENTED");
      expect(parley.message).toBe("parley.history.v1.HistoryService/Sync is not implemented yet");
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

describe("edge", () => {
  const transports: Record<string, () => Transport> = {
    "Connect over HTTP/1.1": () => createConnectTransport({ baseUrl: edgeUrl, httpVersion: "1.1" }),
    "Connect over HTTP/2": () => createConnectTransport({ baseUrl: edgeUrl, httpVersion: "2" }),
    "gRPC over HTTP/2": () => createGrpcTransport({ baseUrl: edgeUrl }),
    "gRPC-Web over HTTP/1.1": () => createGrpcWebTransport({ baseUrl: edgeUrl, httpVersion: "1.1" }),
  };

  it.each(Object.entries(transports))("Locate answers over %s", async (_name, transport) => {
    const response = await createClient(SessionService, transport()).locate({});
    expect(response.edgeUrl).toBe(edgeUrl);
    expect(response.hostId).not.toBe("");
  });

  it("refuses an invalid request with invalid_argument and field violations", async () => {
    const client = createClient(SessionService, transports["Connect over HTTP/1.1"]?.() as Transport);
    const err = ConnectError.from(
      await client.send({}).then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("VALIDATION_FAILED");
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field)).toEqual(["message"]);
  });

  it("answers RPCs not built yet with unimplemented", async () => {
    const client = createClient(SessionService, transports["gRPC over HTTP/2"]?.() as Transport);
    const err = ConnectError.from(
      await client
        .setTyping({ typing: { conversationId: "0190e8f4-1c7b-7000-8000-000000000001", typing: true } })
        .then(
          () => undefined,
          (e: unknown) => e,
        ),
    );
    expect(err.code).toBe(Code.Unimplemented);
    expect(err.rawMessage).toBe("parley.edge.v1.SessionService/SetTyping is not implemented yet");
  });

  it("serves plain HTTP liveness", async () => {
    const response = await fetch(`${edgeUrl}/healthz`);
    expect(response.status).toBe(200);
  });
});
