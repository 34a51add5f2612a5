import { ClientError, Status } from "nice-grpc";
import { afterEach, describe, expect, it } from "vitest";
import { closeChannel, createGrpcClient } from "./client.ts";
import { fromGrpcError } from "./grpc-error.ts";
import { createGrpcServer } from "./server.ts";
import { captureLogs, TestService, validSendRequest } from "./test-support.ts";
import { unimplementedService } from "./unimplemented.ts";

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) {
    await step();
  }
});

async function failure(run: () => Promise<unknown>): Promise<ClientError> {
  try {
    await run();
  } catch (err) {
    expect(err).toBeInstanceOf(ClientError);
    return err as ClientError;
  }
  throw new Error("expected the call to fail");
}

describe("unimplementedService", () => {
  it("answers UNIMPLEMENTED naming the method, for every kind of method", async () => {
    const { logger } = captureLogs();
    const server = createGrpcServer({
      name: "test",
      logger,
      services: [
        {
          service: TestService,
          implementation: {
            ...unimplementedService(TestService),
            lookup: async () => ({ messageId: "real" }),
          },
        },
      ],
    });
    const port = await server.listen("127.0.0.1", 0);
    cleanup.push(() => server.shutdown(100));
    const client = createGrpcClient(TestService, `127.0.0.1:${port}`);
    cleanup.push(() => closeChannel(client));

    const unary = await failure(() => client.unary(validSendRequest()));
    expect(unary.code).toBe(Status.UNIMPLEMENTED);
    expect(unary.details).toBe("parley.test.v1.TestService/Unary is not implemented yet");
    expect(fromGrpcError(unary).reason).toBe("NOT_IMPLEMENTED");

    async function* none() {}
    const upload = await failure(() => client.upload(none()));
    expect(upload.details).toBe("parley.test.v1.TestService/Upload is not implemented yet");

    const watch = await failure(async () => {
      for await (const _ of client.watch(validSendRequest())) {
        // no messages expected
      }
    });
    expect(watch.code).toBe(Status.UNIMPLEMENTED);
    expect(watch.details).toBe("parley.test.v1.TestService/Watch is not implemented yet");

    expect((await client.lookup(validSendRequest())).messageId).toBe("real");
  });
});
