import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { ClientError, Status } from "nice-grpc";
import { afterEach, describe, expect, it } from "vitest";
import type { SendMessageRequest } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import { SenderService, SendMessageRequestSchema } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import { ParleyError } from "../errors.ts";
import { closeChannel, createGrpcClient } from "./client.ts";
import { fromGrpcError } from "./grpc-error.ts";
import { createGrpcServer } from "./server.ts";
import { captureLogs, TestService, validSendRequest } from "./test-support.ts";
import {
  createValidationMiddleware,
  validationFailure as failureOf,
  isCanonicalUuid,
  schemaRegexMatch,
  VALIDATION_FAILED,
  validateMessage,
} from "./validation.ts";

type SendInit = MessageInitShape<typeof SendMessageRequestSchema>;

function withRecipients(count: number, userId: (i: number) => string = (i) => `user-${i}`): SendInit {
  return {
    ...validSendRequest(),
    envelope: {
      kind: 1,
      payload: {
        case: "perDevice",
        value: {
          recipients: Array.from({ length: count }, (_, i) => ({
            userId: userId(i),
            devices: [{ deviceId: "phone", ciphertext: new Uint8Array(16) }],
          })),
        },
      },
    },
  };
}

function withSharedCiphertext(size: number): SendInit {
  return {
    ...validSendRequest(),
    envelope: { kind: 1, payload: { case: "shared", value: { ciphertext: new Uint8Array(size) } } },
  };
}

function validationFailure(init: SendInit): ParleyError {
  try {
    validateMessage(SendMessageRequestSchema, create(SendMessageRequestSchema, init));
  } catch (err) {
    if (err instanceof ParleyError) {
      return err;
    }
    throw err;
  }
  throw new Error("expected the request to be invalid");
}

describe("validateMessage", () => {
  it("accepts a valid request, up to the limits", () => {
    expect(() =>
      validateMessage(SendMessageRequestSchema, create(SendMessageRequestSchema, withSharedCiphertext(4096))),
    ).not.toThrow();
    expect(() =>
      validateMessage(SendMessageRequestSchema, create(SendMessageRequestSchema, withRecipients(1000))),
    ).not.toThrow();
  });

  it("names the field and the rule in the message and the violations", () => {
    const err = validationFailure(withSharedCiphertext(4097));
    expect(err.code).toBe("invalid_argument");
    expect(err.reason).toBe(VALIDATION_FAILED);
    expect(err.message).toContain("envelope.shared.ciphertext: ");
    expect(err.message).toContain("4096 bytes");
    expect(err.violations).toEqual([
      {
        field: "envelope.shared.ciphertext",
        description: expect.stringContaining("4096"),
        reason: "BYTES_MAX_LEN",
      },
    ]);
  });

  it("applies Parley's predefined id rules", () => {
    const err = validationFailure({
      ...validSendRequest(),
      sender: { userId: "alice smith", deviceId: "phone-1" },
      conversationId: "not-a-uuid",
    });
    expect(err.violations.map((v) => v.field).sort()).toEqual(["conversation_id", "sender.user_id"]);
    expect(err.violations.find((v) => v.field === "sender.user_id")?.reason).toBe("STRING_USER_ID");
  });

  it("caps the violations it lists but counts them all", () => {
    const err = validationFailure(withRecipients(300, (i) => `bad id ${i}`));
    expect(err.metadata.violationCount).toBe("300");
    expect(err.violations).toHaveLength(20);
    expect(err.message).toContain("and 295 more");
  });

  it("fails as internal when the validator does not know Parley's rules", () => {
    const bare = createValidator();
    let caught: unknown;
    try {
      validateMessage(SendMessageRequestSchema, create(SendMessageRequestSchema, validSendRequest()), bare);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ParleyError);
    expect((caught as ParleyError).code).toBe("internal");
  });
});

describe("validation middleware", () => {
  const cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) {
      await step();
    }
  });

  async function start(checks?: { readonly unary?: (request: SendMessageRequest) => void }) {
    const { logger } = captureLogs();
    const handled: unknown[] = [];
    const server = createGrpcServer({
      name: "test",
      logger,
      services: [
        {
          service: SenderService,
          implementation: {
            async sendMessage(request) {
              handled.push(request);
              return { messageId: "accepted" };
            },
          },
        },
        {
          service: TestService,
          ...(checks === undefined ? {} : { checks }),
          implementation: {
            unary: async () => ({}),
            lookup: async () => ({}),
            async upload(requests) {
              let n = 0;
              for await (const _ of requests) {
                n++;
              }
              return { messageId: String(n) };
            },
            async *watch() {},
            async *chat() {},
          },
        },
      ],
    });
    const port = await server.listen("127.0.0.1", 0);
    const client = createGrpcClient(SenderService, `127.0.0.1:${port}`);
    const testClient = createGrpcClient(TestService, `127.0.0.1:${port}`);
    cleanup.push(() => server.shutdown(100));
    cleanup.push(() => closeChannel(client));
    cleanup.push(() => closeChannel(testClient));
    return { client, testClient, handled };
  }

  async function rejected(promise: Promise<unknown>) {
    try {
      await promise;
    } catch (err) {
      expect(err).toBeInstanceOf(ClientError);
      expect((err as ClientError).code).toBe(Status.INVALID_ARGUMENT);
      const parley = fromGrpcError(err);
      expect(parley.reason).toBe(VALIDATION_FAILED);
      return parley;
    }
    throw new Error("expected INVALID_ARGUMENT");
  }

  it("lets valid requests through to the handler", async () => {
    const { client, handled } = await start();
    expect((await client.sendMessage(withSharedCiphertext(4096))).messageId).toBe("accepted");
    expect(handled).toHaveLength(1);
  });

  it("rejects an oversize ciphertext before the handler runs", async () => {
    const { client, handled } = await start();
    const err = await rejected(client.sendMessage(withSharedCiphertext(4097)));
    expect(err.violations.map((v) => v.field)).toEqual(["envelope.shared.ciphertext"]);
    expect(err.message).toMatch(/^invalid SendMessageRequest: envelope\.shared\.ciphertext: .*4096 bytes/);
    expect(handled).toHaveLength(0);
  });

  it("rejects 1,001 recipients", async () => {
    const { client } = await start();
    const err = await rejected(client.sendMessage(withRecipients(1001)));
    expect(err.violations.map((v) => v.field)).toEqual(["envelope.per_device.recipients"]);
    expect(err.violations[0]?.reason).toBe("REPEATED_MAX_ITEMS");
  });

  it("rejects a user id with a space and a conversation id that is not a UUID", async () => {
    const { client } = await start();
    const err = await rejected(
      client.sendMessage({
        ...validSendRequest(),
        sender: { userId: "alice smith", deviceId: "phone-1" },
        conversationId: "conversation-1",
      }),
    );
    expect(err.violations.map((v) => v.field).sort()).toEqual(["conversation_id", "sender.user_id"]);
    expect(err.message).toContain("sender.user_id: must be a user id");
    expect(err.message).toContain("conversation_id: must be a UUID");
  });

  it("answers thousands of violations within gRPC's trailer limits", async () => {
    const { client } = await start();
    const err = await rejected(client.sendMessage(withRecipients(1000, (i) => `bad id ${i}`)));
    expect(err.metadata.violationCount).toBe("1000");
    expect(err.violations.length).toBeGreaterThan(0);
  });

  it("runs a registration's own check instead of protovalidate for that method only", async () => {
    const checked: string[] = [];
    const { client, testClient } = await start({
      unary(request) {
        checked.push(request.conversationId);
        if (request.conversationId === "refused-by-hand") {
          throw failureOf(SendMessageRequestSchema, [
            { field: "conversation_id", description: "refused by hand", reason: "BY_HAND" },
          ]);
        }
      },
    });
    // Breaks protovalidate's rules, but this method's check lets it through.
    await testClient.unary({ ...validSendRequest(), conversationId: "conversation-1" });
    const err = await rejected(
      testClient.unary({ ...validSendRequest(), conversationId: "refused-by-hand" }),
    );
    expect(err.message).toBe("invalid SendMessageRequest: conversation_id: refused by hand");
    expect(err.violations).toEqual([
      { field: "conversation_id", description: "refused by hand", reason: "BY_HAND" },
    ]);
    expect(checked).toEqual(["conversation-1", "refused-by-hand"]);
    // The service's other methods, and other services, keep protovalidate.
    const streamed = await rejected(
      testClient.upload(
        (async function* () {
          yield withSharedCiphertext(5000);
        })(),
      ),
    );
    expect(streamed.violations.map((v) => v.field)).toEqual(["envelope.shared.ciphertext"]);
    await rejected(client.sendMessage({ ...validSendRequest(), conversationId: "conversation-1" }));
    expect(checked).toHaveLength(2);
  });

  it("validates every message of a client stream", async () => {
    const { testClient } = await start();
    async function* stream(...inits: SendInit[]) {
      yield* inits;
    }
    expect((await testClient.upload(stream(validSendRequest(), validSendRequest()))).messageId).toBe("2");
    const err = await rejected(testClient.upload(stream(validSendRequest(), withSharedCiphertext(5000))));
    expect(err.violations.map((v) => v.field)).toEqual(["envelope.shared.ciphertext"]);
  });
});

describe("createValidationMiddleware", () => {
  it("refuses a check for a method none of its services has", () => {
    expect(() =>
      createValidationMiddleware(
        [SenderService],
        undefined,
        new Map([["/parley.sender.v1.SenderService/Nope", () => {}]]),
      ),
    ).toThrow(/no service here has/);
  });

  it("refuses at start-up a service whose rules the validator cannot evaluate", () => {
    expect(() => createValidationMiddleware([SenderService], createValidator())).toThrow(
      /cannot validate parley\.sender\.v1\.SendMessageRequest/,
    );
    expect(() => createValidationMiddleware([SenderService])).not.toThrow();
  });
});

describe("schemaRegexMatch", () => {
  it("checks canonical UUIDs by hand, as the rule's pattern reads", () => {
    const pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
    const regex = new RegExp(pattern);
    for (const candidate of [
      "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
      "0190A5B2-7C3D-7E4F-8A9B-0C1D2E3F4A5B",
      "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5",
      "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b0",
      "0190a5b2_7c3d-7e4f-8a9b-0c1d2e3f4a5b",
      "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5g",
      "{190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
      "",
    ]) {
      expect(isCanonicalUuid(candidate), candidate).toBe(regex.test(candidate));
      expect(schemaRegexMatch(pattern, candidate), candidate).toBe(regex.test(candidate));
    }
  });

  it("reads the schemas' \\p{Cc} classes as RE2 does", () => {
    expect(schemaRegexMatch("^[^\\p{Cc}]*$", "Alice’s phone 📱")).toBe(true);
    expect(schemaRegexMatch("^[^\\p{Cc}]*$", "tab\there")).toBe(false);
    expect(schemaRegexMatch("^[^\\p{Cc}]*$", "bell\u0007")).toBe(false);
  });
});
