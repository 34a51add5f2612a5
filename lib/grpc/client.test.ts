import { ClientError, Status } from "nice-grpc";
import { afterEach, describe, expect, it } from "vitest";
import { internal, unavailable } from "../errors.ts";
import { closeChannel, createGrpcClient } from "./client.ts";
import { fromGrpcError } from "./grpc-error.ts";
import { createGrpcServer } from "./server.ts";
import { captureLogs, TestService, validSendRequest } from "./test-support.ts";

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) {
    await step();
  }
});

/** A server whose unary methods fail with `failures` in turn, then succeed; it counts calls. */
async function start(failures: Error[], delayMs = 0) {
  const calls = { unary: 0, lookup: 0 };
  const { logger } = captureLogs();
  const answer = async (method: keyof typeof calls) => {
    calls[method]++;
    const failure = failures.shift();
    if (failure !== undefined) {
      throw failure;
    }
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    return { messageId: `${method} ok` };
  };
  const server = createGrpcServer({
    name: "test",
    logger,
    services: [
      {
        service: TestService,
        implementation: {
          unary: () => answer("unary"),
          lookup: () => answer("lookup"),
          upload: async () => ({}),
          async *watch() {},
          async *chat() {},
        },
      },
    ],
  });
  const port = await server.listen("127.0.0.1", 0);
  cleanup.push(() => server.shutdown(100));
  return { calls, address: `127.0.0.1:${port}` };
}

function client(address: string, defaultDeadlineMs = 5_000) {
  const c = createGrpcClient(TestService, address, { defaultDeadlineMs, retryBaseDelayMs: 1 });
  cleanup.push(() => closeChannel(c));
  return c;
}

async function failure(promise: Promise<unknown>): Promise<ClientError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(ClientError);
    return err as ClientError;
  }
  throw new Error("expected the call to fail");
}

describe("createGrpcClient retries", () => {
  it("retries a method marked NO_SIDE_EFFECTS on UNAVAILABLE", async () => {
    const { calls, address } = await start([unavailable("DRAINING", "draining")]);
    expect((await client(address).lookup(validSendRequest())).messageId).toBe("lookup ok");
    expect(calls.lookup).toBe(2);
  });

  it("does not retry other methods unless the call opts in", async () => {
    const { calls, address } = await start([
      unavailable("DRAINING", "draining"),
      unavailable("DRAINING", "again"),
    ]);
    const c = client(address);
    const err = await failure(c.unary(validSendRequest()));
    expect(err.code).toBe(Status.UNAVAILABLE);
    expect(calls.unary).toBe(1);
    expect((await c.unary(validSendRequest(), { retry: true })).messageId).toBe("unary ok");
    expect(calls.unary).toBe(3);
  });

  it("does not retry codes other than UNAVAILABLE", async () => {
    const { calls, address } = await start([internal("BROKEN", "broken")]);
    const err = await failure(client(address).lookup(validSendRequest()));
    expect(err.code).toBe(Status.INTERNAL);
    expect(calls.lookup).toBe(1);
  });

  it("gives up after the last attempt and keeps the last error's details", async () => {
    const { calls, address } = await start([
      unavailable("DRAINING", "1"),
      unavailable("DRAINING", "2"),
      unavailable("OVERLOADED", "3"),
    ]);
    const err = await failure(client(address).lookup(validSendRequest()));
    expect(calls.lookup).toBe(3);
    expect(fromGrpcError(err)).toMatchObject({ code: "unavailable", reason: "OVERLOADED", message: "3" });
  });
});

describe("createGrpcClient deadlines", () => {
  it("applies the default deadline", async () => {
    const { address } = await start([], 1_000);
    const started = Date.now();
    const err = await failure(client(address, 100).unary(validSendRequest()));
    expect(err.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(900);
    expect(fromGrpcError(err).code).toBe("deadline_exceeded");
  });

  it("lets a call set its own deadline", async () => {
    const { address } = await start([], 200);
    expect((await client(address, 50).unary(validSendRequest(), { deadline: 2_000 })).messageId).toBe(
      "unary ok",
    );
  });
});

describe("closeChannel", () => {
  it("closes the client's channel", async () => {
    const { address } = await start([]);
    const c = createGrpcClient(TestService, address);
    expect((await c.unary(validSendRequest())).messageId).toBe("unary ok");
    closeChannel(c);
    await expect(c.unary(validSendRequest())).rejects.toThrow();
  });
});
