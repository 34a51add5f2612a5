// Helpers for lib's own tests; not exported from lib/index.ts.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, createFileRegistry } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { FileDescriptorProtoSchema, MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import {
  file_parley_sender_v1_sender_service,
  type SendMessageRequestSchema,
  type SendMessageResponseSchema,
} from "../../gen/parley/sender/v1/sender_service_pb.ts";
import type { Logger, LogLevel } from "../logging.ts";
import { createLogger } from "../logging.ts";

type Method<K extends "unary" | "server_streaming" | "client_streaming" | "bidi_streaming"> = {
  methodKind: K;
  input: typeof SendMessageRequestSchema;
  output: typeof SendMessageResponseSchema;
};

const REQUEST = ".parley.sender.v1.SendMessageRequest";
const RESPONSE = ".parley.sender.v1.SendMessageResponse";

const file = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "parley/test/v1/test_service.proto",
    package: "parley.test.v1",
    syntax: "proto3",
    dependency: ["parley/sender/v1/sender_service.proto"],
    service: [
      {
        name: "TestService",
        method: [
          { name: "Unary", inputType: REQUEST, outputType: RESPONSE },
          {
            name: "Lookup",
            inputType: REQUEST,
            outputType: RESPONSE,
            options: { idempotencyLevel: MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS },
          },
          { name: "Upload", inputType: REQUEST, outputType: RESPONSE, clientStreaming: true },
          { name: "Watch", inputType: REQUEST, outputType: RESPONSE, serverStreaming: true },
          {
            name: "Chat",
            inputType: REQUEST,
            outputType: RESPONSE,
            clientStreaming: true,
            serverStreaming: true,
          },
        ],
      },
    ],
  }),
  (name) =>
    name === "parley/sender/v1/sender_service.proto" ? file_parley_sender_v1_sender_service : undefined,
);

/**
 * A service with every kind of method over the sender's messages, built at run time so streaming
 * and idempotency can be tested before any real contract has them.
 */
export const TestService = file.getService("parley.test.v1.TestService") as GenService<{
  unary: Method<"unary">;
  lookup: Method<"unary">;
  upload: Method<"client_streaming">;
  watch: Method<"server_streaming">;
  chat: Method<"bidi_streaming">;
}>;

/** A logger whose JSON lines are collected, parsed, in `lines`. */
export function captureLogs(level: LogLevel = "debug"): {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
} {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger("test", level, {
    write(line: string) {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  return { logger, lines };
}

/** A SendMessageRequest that passes every rule: tests break one thing at a time. */
export function validSendRequest() {
  return {
    sender: { userId: "alice", deviceId: "phone-1" },
    conversationId: "3f0e8c9a-6a47-5b1e-9c41-2d7f6b8e1a20",
    clientMessageId: "0190b6a4-8c3e-7a1d-9f2b-4c5d6e7f8a9b",
    envelope: {
      kind: ContentKind.TEXT,
      payload: { case: "shared", value: { ciphertext: new Uint8Array(64) } },
    },
  } satisfies MessageInitShape<typeof SendMessageRequestSchema>;
}
