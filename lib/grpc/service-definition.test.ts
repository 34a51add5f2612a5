import { isMessage } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Channel, Server } from "nice-grpc";
import { createChannel, createClient, createServer } from "nice-grpc";
import { afterEach, describe, expect, it } from "vitest";
import {
  SenderService,
  SendMessageRequestSchema,
  SendMessageResponseSchema,
} from "../../gen/parley/sender/v1/sender_service_pb.ts";
import type { GrpcServiceImplementation } from "./service-definition.ts";
import { toServiceDefinition } from "./service-definition.ts";
import { TestService, validSendRequest } from "./test-support.ts";

const running: Array<{ server: Server; channel: Channel }> = [];

afterEach(async () => {
  for (const { server, channel } of running.splice(0)) {
    channel.close();
    server.forceShutdown();
  }
});

async function serve<T extends Parameters<Server["add"]>[0]>(
  definition: T,
  implementation: Parameters<Server["add"]>[1],
) {
  const server = createServer();
  server.add(definition, implementation);
  const port = await server.listen("127.0.0.1:0");
  const channel = createChannel(`127.0.0.1:${port}`);
  running.push({ server, channel });
  return channel;
}

describe("toServiceDefinition", () => {
  it("describes each method by its gRPC path and kind", () => {
    const definition = toServiceDefinition(TestService);
    expect(Object.keys(definition)).toEqual(["unary", "lookup", "upload", "watch", "chat"]);
    expect(definition.unary.path).toBe("/parley.test.v1.TestService/Unary");
    expect([definition.unary.requestStream, definition.unary.responseStream]).toEqual([false, false]);
    expect([definition.upload.requestStream, definition.upload.responseStream]).toEqual([true, false]);
    expect([definition.watch.requestStream, definition.watch.responseStream]).toEqual([false, true]);
    expect([definition.chat.requestStream, definition.chat.responseStream]).toEqual([true, true]);
    expect(definition.lookup.options.idempotencyLevel).toBe("NO_SIDE_EFFECTS");
    expect(definition.unary.options.idempotencyLevel).toBeUndefined();
    expect(toServiceDefinition(SenderService).sendMessage.path).toBe(
      "/parley.sender.v1.SenderService/SendMessage",
    );
  });

  it("carries a typed unary call over loopback", async () => {
    const acceptedAt = new Date("2025-01-02T03:04:05.678Z");
    const seen: unknown[] = [];
    const implementation: GrpcServiceImplementation<typeof SenderService> = {
      async sendMessage(request) {
        seen.push(request);
        const payload = request.envelope?.payload;
        const size = payload?.case === "shared" ? payload.value.ciphertext.byteLength : -1;
        return {
          messageId: `${request.sender?.userId}:${request.clientMessageId}:${size}`,
          acceptedAt: timestampFromDate(acceptedAt),
          duplicate: true,
        };
      },
    };
    const definition = toServiceDefinition(SenderService);
    const channel = await serve(definition, implementation);
    const client = createClient(definition, channel);

    const response = await client.sendMessage(validSendRequest());

    expect(isMessage(seen[0], SendMessageRequestSchema)).toBe(true);
    expect(isMessage(response, SendMessageResponseSchema)).toBe(true);
    expect(response.messageId).toBe("alice:0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a9b:64");
    expect(response.duplicate).toBe(true);
    expect(response.acceptedAt && timestampDate(response.acceptedAt)).toEqual(acceptedAt);
  });

  it("derives handler types that tsc checks (see typeChecks)", () => {
    expect(typeChecks()).toHaveLength(3);
  });

  it("carries client, server and bidi streams", async () => {
    const definition = toServiceDefinition(TestService);
    const implementation: GrpcServiceImplementation<typeof TestService> = {
      async unary(request) {
        return { messageId: request.clientMessageId };
      },
      async lookup(request) {
        return { messageId: request.clientMessageId };
      },
      async upload(requests) {
        const ids: string[] = [];
        for await (const request of requests) {
          ids.push(request.clientMessageId);
        }
        return { messageId: ids.join(",") };
      },
      async *watch(request) {
        for (let i = 0; i < 3; i++) {
          yield { messageId: `${request.clientMessageId}#${i}` };
        }
      },
      async *chat(requests) {
        for await (const request of requests) {
          yield { messageId: request.clientMessageId.toUpperCase() };
        }
      },
    };
    const client = createClient(definition, await serve(definition, implementation));

    async function* requests(...ids: string[]) {
      for (const id of ids) {
        yield { clientMessageId: id };
      }
    }
    expect((await client.upload(requests("a", "b", "c"))).messageId).toBe("a,b,c");
    const watched: string[] = [];
    for await (const response of client.watch({ clientMessageId: "w" })) {
      watched.push(response.messageId);
    }
    expect(watched).toEqual(["w#0", "w#1", "w#2"]);
    const chatted: string[] = [];
    for await (const response of client.chat(requests("x", "y"))) {
      chatted.push(response.messageId);
    }
    expect(chatted).toEqual(["X", "Y"]);
  });
});

// The handlers are never run: tsc checks that the derived types reject wrong field names.
function typeChecks(): GrpcServiceImplementation<typeof SenderService>[] {
  return [
    {
      async sendMessage(request) {
        // @ts-expect-error conversationID is not a field of SendMessageRequest
        return { messageId: request.conversationID };
      },
    },
    {
      // @ts-expect-error messageIdentifier is not a field of SendMessageResponse
      async sendMessage() {
        return { messageIdentifier: "x" };
      },
    },
    {
      async sendMessage(request) {
        // @ts-expect-error ciphertext is bytes, not a string
        const text: string =
          request.envelope?.payload.case === "shared" ? request.envelope.payload.value.ciphertext : "";
        return { messageId: text };
      },
    },
  ];
}
