import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { trace } from "@opentelemetry/api";
import type { Channel } from "nice-grpc";
import { ClientError, createChannel, createClient, Status } from "nice-grpc";
import { HealthDefinition } from "nice-grpc-server-health";
import { ServerReflectionService } from "nice-grpc-server-reflection";
import reflectionPb from "nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb.js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SenderService, SendMessageRequestSchema } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import { INTERNAL_ERROR_MESSAGE, notFound } from "../errors.ts";
import { CLIENT_MESSAGE_MAX_BYTES, INTERNAL_MESSAGE_MAX_BYTES } from "../message-limits.ts";
import type { StopTelemetry } from "../telemetry.ts";
import { startTelemetry } from "../telemetry.ts";
import { closeChannel, createGrpcClient } from "./client.ts";
import { fromGrpcError, STATUS_DETAILS_KEY } from "./grpc-error.ts";
import { ServerReflectionV1AlphaService } from "./reflection.ts";
import type { GrpcServer } from "./server.ts";
import { createGrpcServer } from "./server.ts";
import type { GrpcServiceImplementation } from "./service-definition.ts";
import { captureLogs, validSendRequest } from "./test-support.ts";

const { ServerReflectionRequest } = reflectionPb;

let stopTelemetry: StopTelemetry;
beforeAll(() => {
  stopTelemetry = startTelemetry({ serviceName: "lib-test" });
});
afterAll(async () => {
  await stopTelemetry();
});

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) {
    await step();
  }
});

type Handler = GrpcServiceImplementation<typeof SenderService>["sendMessage"];

async function start(sendMessage: Handler) {
  const { logger, lines } = captureLogs();
  const server = createGrpcServer({
    name: "test",
    logger,
    services: [{ service: SenderService, implementation: { sendMessage } }],
    shutdownTimeoutMs: 200,
  });
  const port = await server.listen("127.0.0.1", 0);
  const address = `127.0.0.1:${port}`;
  const client = createGrpcClient(SenderService, address, { defaultDeadlineMs: 5_000 });
  const channel = createChannel(address);
  cleanup.push(() => server.shutdown(100));
  cleanup.push(() => closeChannel(client));
  cleanup.push(() => channel.close());
  return { server, client, channel, port, address, lines };
}

async function failure(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected the call to fail");
}

describe("createGrpcServer", () => {
  it("listens on the port it was given, or a free one for 0", async () => {
    const { port } = await start(async () => ({ messageId: "m" }));
    expect(port).toBeGreaterThan(0);
  });

  it("receives what the edge accepts plus what a hop adds, and refuses more with RESOURCE_EXHAUSTED", async () => {
    // gRPC's usual 4 MiB default would refuse a send the edge accepted (its own limit) once the
    // sender's address is added to it.
    const withCiphertexts = (users: number) => {
      const request = validSendRequest();
      const recipients = Array.from({ length: users }, (_, u) => ({
        userId: `user-${u}`,
        devices: Array.from({ length: 5 }, (_, d) => ({
          deviceId: `device-${d}`,
          ciphertext: new Uint8Array(4_096),
        })),
      }));
      return {
        ...request,
        envelope: { ...request.envelope, payload: { case: "perDevice" as const, value: { recipients } } },
      };
    };
    const received: number[] = [];
    const { client } = await start(async (request) => {
      const payload = request.envelope?.payload;
      received.push(payload?.case === "perDevice" ? payload.value.recipients.length : 0);
      return { messageId: "m" };
    });
    const justOver = withCiphertexts(205);
    expect(
      toBinary(SendMessageRequestSchema, create(SendMessageRequestSchema, justOver)).length,
    ).toBeGreaterThan(CLIENT_MESSAGE_MAX_BYTES);
    await client.sendMessage(justOver);
    expect(received).toEqual([205]);

    const tooLarge = withCiphertexts(270);
    expect(
      toBinary(SendMessageRequestSchema, create(SendMessageRequestSchema, tooLarge)).length,
    ).toBeGreaterThan(INTERNAL_MESSAGE_MAX_BYTES);
    const err = await failure(client.sendMessage(tooLarge));
    expect((err as ClientError).code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(received).toEqual([205]);
  });

  it("lets its clients receive answers over gRPC's usual 4 MiB too", async () => {
    const messageId = "m".repeat(CLIENT_MESSAGE_MAX_BYTES + 1024);
    const { client } = await start(async () => ({ messageId }));
    expect((await client.sendMessage(validSendRequest())).messageId.length).toBe(messageId.length);
  });

  it("sends a ParleyError as its status code, message and ErrorInfo", async () => {
    const { client } = await start(async () => {
      throw notFound("CONVERSATION_NOT_FOUND", "no conversation 42", { metadata: { conversationId: "42" } });
    });
    const err = await failure(client.sendMessage(validSendRequest()));
    expect(err).toBeInstanceOf(ClientError);
    expect((err as ClientError).code).toBe(Status.NOT_FOUND);
    expect((err as ClientError).details).toBe("no conversation 42");
    const parley = fromGrpcError(err);
    expect(parley.code).toBe("not_found");
    expect(parley.reason).toBe("CONVERSATION_NOT_FOUND");
    expect(parley.metadata).toEqual({ conversationId: "42" });
    expect(parley.message).toBe("no conversation 42");
  });

  it("puts the status details in grpc-status-details-bin for any gRPC client", async () => {
    const { address } = await start(async () => {
      throw notFound("CONVERSATION_NOT_FOUND", "gone");
    });
    const raw = new grpc.Client(address, grpc.credentials.createInsecure());
    cleanup.push(() => raw.close());
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      raw.makeUnaryRequest(
        "/parley.sender.v1.SenderService/SendMessage",
        (request: Uint8Array) => Buffer.from(request),
        (b: Buffer) => b,
        toBinary(SendMessageRequestSchema, create(SendMessageRequestSchema, validSendRequest())),
        (e) => resolve(e as grpc.ServiceError),
      );
    });
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.metadata.get(STATUS_DETAILS_KEY)).toHaveLength(1);
    expect(fromGrpcError(err).reason).toBe("CONVERSATION_NOT_FOUND");
  });

  it("answers INTERNAL with a generic message for unexpected errors and logs the cause", async () => {
    const { client, lines } = await start(async () => {
      throw new Error("db password is hunter2");
    });
    const err = await failure(client.sendMessage(validSendRequest()));
    expect((err as ClientError).code).toBe(Status.INTERNAL);
    expect((err as ClientError).details).toBe(INTERNAL_ERROR_MESSAGE);
    expect(JSON.stringify(err)).not.toContain("hunter2");
    expect(String((err as Error).message)).not.toContain("hunter2");
    const parley = fromGrpcError(err);
    expect(parley.code).toBe("internal");
    expect(parley.reason).toBe("INTERNAL");
    const logged = lines.find((l) => l.msg === "unexpected error in handler");
    expect(JSON.stringify(logged)).toContain("hunter2");
  });

  it("logs one line per RPC with method, code, duration and the caller's trace", async () => {
    const { client, lines } = await start(async () => ({ messageId: "m" }));
    const tracer = trace.getTracer("test");
    const traceId = await tracer.startActiveSpan("caller", async (span) => {
      await client.sendMessage(validSendRequest());
      span.end();
      return span.spanContext().traceId;
    });
    const rpcLines = lines.filter((l) => l.msg === "rpc");
    expect(rpcLines).toHaveLength(1);
    const [line] = rpcLines;
    expect(line).toMatchObject({
      level: "info",
      method: "/parley.sender.v1.SenderService/SendMessage",
      code: "OK",
      trace_id: traceId,
    });
    expect(line?.span_id).toMatch(/^[0-9a-f]{16}$/);
    expect(typeof line?.duration_ms).toBe("number");
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
  });

  it("makes the server span active in the handler", async () => {
    let inHandler: string | undefined;
    const { client, lines } = await start(async () => {
      inHandler = trace.getActiveSpan()?.spanContext().traceId;
      return { messageId: "m" };
    });
    await client.sendMessage(validSendRequest());
    expect(inHandler).toMatch(/^[0-9a-f]{32}$/);
    expect(lines.find((l) => l.msg === "rpc")?.trace_id).toBe(inHandler);
  });

  it("logs the code and reason of failed calls", async () => {
    const { client, lines } = await start(async () => {
      throw notFound("CONVERSATION_NOT_FOUND", "gone");
    });
    await failure(client.sendMessage(validSendRequest()));
    expect(lines.find((l) => l.msg === "rpc")).toMatchObject({
      code: "NOT_FOUND",
      reason: "CONVERSATION_NOT_FOUND",
    });
  });
});

describe("health", () => {
  it("reports each service and the server as SERVING, and follows the health state", async () => {
    const { server, channel } = await start(async () => ({ messageId: "m" }));
    const health = createClient(HealthDefinition, channel);
    // 1 is SERVING, 2 NOT_SERVING in grpc.health.v1.
    expect((await health.check({ service: "parley.sender.v1.SenderService" })).status).toBe(1);
    expect((await health.check({ service: "" })).status).toBe(1);
    const unknown = await failure(health.check({ service: "parley.nope.v1.NopeService" }));
    expect((unknown as ClientError).code).toBe(Status.NOT_FOUND);
    server.health.setStatus("unhealthy", "parley.sender.v1.SenderService");
    expect((await health.check({ service: "parley.sender.v1.SenderService" })).status).toBe(2);
  });
});

describe("reflection", () => {
  async function reflect(
    channel: Channel,
    request: InstanceType<typeof ServerReflectionRequest>,
    v1alpha = false,
  ) {
    const client = createClient(v1alpha ? ServerReflectionV1AlphaService : ServerReflectionService, channel);
    async function* one() {
      yield request;
    }
    for await (const response of client.serverReflectionInfo(one())) {
      return response;
    }
    throw new Error("no reflection response");
  }

  it("lists the registered services", async () => {
    const { channel } = await start(async () => ({ messageId: "m" }));
    for (const v1alpha of [false, true]) {
      const response = await reflect(channel, new ServerReflectionRequest().setListServices("*"), v1alpha);
      const names = response
        .getListServicesResponse()
        ?.getServiceList()
        .map((s) => s.getName());
      expect(names).toEqual(["parley.sender.v1.SenderService"]);
    }
  });

  it("returns the file that defines a symbol, and the files it imports", async () => {
    const { channel } = await start(async () => ({ messageId: "m" }));
    const bySymbol = await reflect(
      channel,
      new ServerReflectionRequest().setFileContainingSymbol("parley.sender.v1.SendMessageRequest"),
    );
    const [bytes] = bySymbol.getFileDescriptorResponse()?.getFileDescriptorProtoList_asU8() ?? [];
    expect(bytes).toBeDefined();
    const file = fromBinary(FileDescriptorProtoSchema, bytes as Uint8Array);
    expect(file.name).toBe("parley/sender/v1/sender_service.proto");
    expect(file.service.map((s) => s.name)).toEqual(["SenderService"]);

    for (const dependency of file.dependency) {
      const byName = await reflect(channel, new ServerReflectionRequest().setFileByFilename(dependency));
      expect(byName.getErrorResponse(), dependency).toBeUndefined();
    }
    const missing = await reflect(
      channel,
      new ServerReflectionRequest().setFileContainingSymbol("parley.Nope"),
    );
    expect(missing.getErrorResponse()?.getErrorCode()).toBe(Status.NOT_FOUND);
  });
});

describe("shutdown", () => {
  it("waits for running calls, then cancels them after the timeout", async () => {
    const { logger } = captureLogs();
    let release: () => void = () => {};
    const server: GrpcServer = createGrpcServer({
      name: "test",
      logger,
      services: [
        {
          service: SenderService,
          implementation: {
            sendMessage: (_request, context) =>
              new Promise<{ messageId: string }>((resolve) => {
                release = () => resolve({ messageId: "late" });
                context.signal.addEventListener("abort", () => resolve({ messageId: "aborted" }));
              }),
          },
        },
      ],
    });
    const port = await server.listen("127.0.0.1", 0);
    const client = createGrpcClient(SenderService, `127.0.0.1:${port}`);
    cleanup.push(() => closeChannel(client));
    const call = client.sendMessage(validSendRequest()).catch((err: unknown) => err);
    await new Promise((resolve) => setTimeout(resolve, 100));

    const started = Date.now();
    await server.shutdown(300);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(5_000);
    const outcome = await call;
    expect(outcome).toBeInstanceOf(ClientError);
    expect((outcome as ClientError).code).toBe(Status.CANCELLED);
    release();
  });

  it("lets a call finish within the timeout, and ends health watches at once", async () => {
    const { logger } = captureLogs();
    let received = false;
    const server = createGrpcServer({
      name: "test",
      logger,
      services: [
        {
          service: SenderService,
          implementation: {
            sendMessage: () => {
              received = true;
              return new Promise<{ messageId: string }>((resolve) =>
                setTimeout(() => resolve({ messageId: "finished" }), 200),
              );
            },
          },
        },
      ],
    });
    const port = await server.listen("127.0.0.1", 0);
    const client = createGrpcClient(SenderService, `127.0.0.1:${port}`);
    const channel = createChannel(`127.0.0.1:${port}`);
    cleanup.push(() => closeChannel(client));
    cleanup.push(() => channel.close());

    const watched: number[] = [];
    const watch = (async () => {
      try {
        for await (const response of createClient(HealthDefinition, channel).watch({ service: "" })) {
          watched.push(response.status);
        }
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    const call = client.sendMessage(validSendRequest());
    // Shut down once the call is running and the watch has its first status (however slow the
    // machine is), so what is tested is the shutdown, not the race to get there.
    while (!received || watched.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));

    const started = Date.now();
    await server.shutdown(10_000);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await call).messageId).toBe("finished");
    await watch;
    expect(watched[0]).toBe(1);
  });
});
