import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { afterEach, describe, expect, it } from "vitest";
import { KeyService } from "../../../../gen/parley/key/v1/key_service_pb.ts";
import { isParleyError, notFound } from "../../../../lib/errors.ts";
import { createGrpcServer } from "../../../../lib/grpc/server.ts";
import { unimplementedService } from "../../../../lib/grpc/unimplemented.ts";
import { createLogger } from "../../../../lib/logging.ts";
import { createKeyServiceDeviceDirectory } from "./key-service-device-directory.ts";

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

const KEY = new Uint8Array(33).fill(5);
const AT = new Date("2030-01-01T00:00:00.000Z");

async function keyServer(fail: boolean): Promise<{ address: string; calls: unknown[] }> {
  const calls: unknown[] = [];
  const server = createGrpcServer({
    name: "fake-key",
    logger: createLogger("fake-key", "silent"),
    services: [
      {
        service: KeyService,
        implementation: {
          ...unimplementedService(KeyService),
          async getIdentityKeys(req) {
            calls.push([req.userId, [...req.targetUserIds]]);
            if (fail) throw notFound("WHATEVER", "nope");
            return {
              users: req.targetUserIds.map((userId) => ({
                userId,
                devices:
                  userId === "bob"
                    ? [{ deviceId: "phone", identityKey: KEY, identityKeyCreatedAt: timestampFromDate(AT) }]
                    : [],
              })),
            };
          },
        },
      },
    ],
  });
  const port = await server.listen("127.0.0.1", 0);
  cleanup.push(() => server.shutdown(100));
  return { address: `127.0.0.1:${port}`, calls };
}

describe("key service device directory", () => {
  it("asks GetIdentityKeys as the caller and maps the devices of every requested user", async () => {
    const { address, calls } = await keyServer(false);
    const directory = createKeyServiceDeviceDirectory(address);
    cleanup.push(() => directory.close());
    const devices = await directory.identityKeys("alice", ["bob", "carol"]);
    expect(calls).toEqual([["alice", ["bob", "carol"]]]);
    expect(devices.get("carol")).toEqual([]);
    const [phone] = devices.get("bob") ?? [];
    expect(phone).toMatchObject({
      deviceId: "phone",
      identityKeyCreatedAt: AT,
      previousIdentityKeyValidUntil: undefined,
    });
    expect([...(phone?.identityKey ?? [])]).toEqual([...KEY]);
    expect(phone?.previousIdentityKey.length).toBe(0);
  });

  it("turns a failed call into UNAVAILABLE (KEY_SERVICE_UNAVAILABLE)", async () => {
    const { address } = await keyServer(true);
    const directory = createKeyServiceDeviceDirectory(address);
    cleanup.push(() => directory.close());
    const err = await directory.identityKeys("alice", ["bob"]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isParleyError(err) && [err.code, err.reason]).toEqual(["unavailable", "KEY_SERVICE_UNAVAILABLE"]);
  });
});
