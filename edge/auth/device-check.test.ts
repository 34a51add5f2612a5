import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it, vi } from "vitest";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import { DeviceAddressSchema } from "../../gen/parley/common/v1/address_pb.ts";
import { DeviceStatus, GetDeviceStatusResponseSchema } from "../../gen/parley/key/v1/key_service_pb.ts";
import { cacheDeviceCheck, keyServiceDeviceCheck } from "./device-check.ts";
import type { DeviceStanding } from "./verifier.ts";

const phone = create(DeviceAddressSchema, { userId: "alice", deviceId: "phone" });
const laptop = create(DeviceAddressSchema, { userId: "alice", deviceId: "laptop" });

function deferred<T>() {
  let resolve: (value: T) => void = () => {};
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe("keyServiceDeviceCheck", () => {
  const answering = (response: MessageInitShape<typeof GetDeviceStatusResponseSchema>) =>
    keyServiceDeviceCheck({
      getDeviceStatus: async () => create(GetDeviceStatusResponseSchema, response),
    });

  it("maps GetDeviceStatus to the verifier's standing", async () => {
    expect(await answering({ status: DeviceStatus.ACTIVE })(phone)).toEqual({ state: "active" });
    expect(await answering({ status: DeviceStatus.UNKNOWN })(phone)).toEqual({ state: "unknown" });
    const removedAt = new Date("2030-01-01T00:00:00.123Z");
    expect(
      await answering({ status: DeviceStatus.REMOVED, removedAt: timestampFromDate(removedAt) })(phone),
    ).toEqual({ state: "removed", removedAt });
    // An answer it cannot read is a failure (the verifier fails closed: AUTH_CHECK_UNAVAILABLE).
    await expect(answering({ status: DeviceStatus.UNSPECIFIED })(phone)).rejects.toThrow();
    await expect(answering({ status: DeviceStatus.REMOVED })(phone)).rejects.toThrow();
  });

  it("asks about exactly the token's device", async () => {
    const getDeviceStatus = vi.fn(async () =>
      create(GetDeviceStatusResponseSchema, { status: DeviceStatus.ACTIVE }),
    );
    await keyServiceDeviceCheck({ getDeviceStatus })(phone);
    expect(getDeviceStatus).toHaveBeenCalledWith(
      { device: { userId: "alice", deviceId: "phone" } },
      expect.objectContaining({ deadline: expect.any(Number) }),
    );
  });
});

describe("cacheDeviceCheck", () => {
  function harness(answer: (device: DeviceAddress) => Promise<boolean | DeviceStanding>) {
    let now = 1_000;
    const check = vi.fn(answer);
    const cached = cacheDeviceCheck(check, { activeTtlMs: 10_000, now: () => now });
    return {
      check,
      cached,
      advance(ms: number) {
        now += ms;
      },
    };
  }

  it("reuses an active answer for its TTL, then asks again", async () => {
    const h = harness(async () => ({ state: "active" }));
    expect(await h.cached.check(phone)).toEqual({ state: "active" });
    expect(await h.cached.check(phone)).toBe(true);
    h.advance(9_999);
    await h.cached.check(phone);
    expect(h.check).toHaveBeenCalledTimes(1);
    h.advance(1);
    await h.cached.check(phone);
    expect(h.check).toHaveBeenCalledTimes(2);
    // Per device.
    await h.cached.check(laptop);
    expect(h.check).toHaveBeenCalledTimes(3);
  });

  it("never caches unknown, removed or failed answers", async () => {
    let answer: DeviceStanding | Error = { state: "unknown" };
    const h = harness(async () => {
      if (answer instanceof Error) throw answer;
      return answer;
    });
    await h.cached.check(phone);
    await h.cached.check(phone);
    answer = { state: "removed", removedAt: new Date(0) };
    await h.cached.check(phone);
    answer = new Error("key unreachable");
    await expect(h.cached.check(phone)).rejects.toThrow("key unreachable");
    expect(h.check).toHaveBeenCalledTimes(4);
    expect(h.cached.size).toBe(0);
    // Registered just now: the very next check sees it.
    answer = { state: "active" };
    expect(await h.cached.check(phone)).toEqual({ state: "active" });
  });

  it("forgets a device at once, and does not cache a lookup that ran across the forget", async () => {
    const h = harness(async () => ({ state: "active" }));
    await h.cached.check(phone);
    await h.cached.check(laptop);
    h.cached.forget(phone);
    await h.cached.check(phone);
    await h.cached.check(laptop);
    expect(h.check.mock.calls.map(([d]) => d.deviceId)).toEqual(["phone", "laptop", "phone"]);

    const slow = deferred<DeviceStanding>();
    const racing = harness(() => slow.promise);
    const running = racing.cached.check(phone);
    racing.cached.forget(phone); // removed while the lookup ran: its answer may predate that
    slow.resolve({ state: "active" });
    await running;
    expect(racing.cached.size).toBe(0);
  });

  it("shares one lookup among concurrent checks of a device", async () => {
    const slow = deferred<DeviceStanding>();
    const h = harness(() => slow.promise);
    const checks = Array.from({ length: 20 }, () => h.cached.check(phone));
    slow.resolve({ state: "active" });
    expect(new Set(await Promise.all(checks)).size).toBe(1);
    expect(h.check).toHaveBeenCalledTimes(1);
  });

  it("keeps at most maxEntries devices, dropping the oldest", async () => {
    const check = vi.fn(async () => true as const);
    const cached = cacheDeviceCheck(check, { maxEntries: 2 });
    for (const deviceId of ["a", "b", "c"]) {
      await cached.check(create(DeviceAddressSchema, { userId: "u", deviceId }));
    }
    expect(cached.size).toBe(2);
    await cached.check(create(DeviceAddressSchema, { userId: "u", deviceId: "a" }));
    expect(check).toHaveBeenCalledTimes(4);
  });
});
