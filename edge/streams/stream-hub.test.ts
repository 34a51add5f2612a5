import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { DeviceAddressSchema } from "../../gen/parley/common/v1/address_pb.ts";
import type { PushBatchRequest } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { PushBatchRequestSchema, PushOutcome } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { CloseReason } from "../../gen/parley/edge/v1/frames_pb.ts";
import { KeyChangeKind } from "../../gen/parley/events/v1/key_events_pb.ts";
import { createLogger } from "../../lib/logging.ts";
import type { HostLease } from "../../lib/registry/registry.ts";
import type { DeviceStream } from "./device-stream.ts";
import { createStreamHub } from "./stream-hub.ts";

const HOST = "edge-test";
const T = new Date("2030-01-01T00:00:00Z");
const at = (seconds: number) => new Date(T.getTime() + seconds * 1000);
const alicePhone = create(DeviceAddressSchema, { userId: "alice", deviceId: "phone" });
const aliceLaptop = create(DeviceAddressSchema, { userId: "alice", deviceId: "laptop" });

function hub() {
  let revision = 0n;
  const lease: HostLease = {
    hostId: HOST,
    update: async () => {},
    assignDevice: async () => ++revision,
    releaseDevice: async () => {},
    revoke: async () => {},
    lost: new Promise(() => {}),
  };
  const removals: string[] = [];
  const streams = createStreamHub({
    hostId: () => HOST,
    lease: async () => lease,
    presence: { report: () => {}, flush: async () => {} },
    limits: { heartbeatIntervalMs: 60_000, queueLimit: 100, maxBadFramesPerMinute: 10, closeGraceMs: 1_000 },
    logger: createLogger("hub-test", "silent"),
    onDeviceRemoved: (device, removedAt) =>
      removals.push(`${device.userId}/${device.deviceId}@${removedAt.toISOString()}`),
  });
  const open = async (device = alicePhone, tokenIssuedAt = at(0)) => {
    const stream = await streams.open(device, "subscribe", {
      expiresAt: at(3600 * 24 * 365 * 100),
      tokenIssuedAt,
    });
    stream.goLive();
    return stream;
  };
  return { streams, open, removals };
}

async function written(stream: DeviceStream): Promise<{ frames: ServerFrame[]; error: unknown }> {
  const frames: ServerFrame[] = [];
  try {
    for await (const f of stream.frames()) frames.push(f);
    return { frames, error: undefined };
  } catch (error) {
    return { frames, error };
  }
}

const removal = (
  routes: { device: typeof alicePhone; revision: bigint }[],
  removedAt: Date,
): PushBatchRequest =>
  create(PushBatchRequestSchema, {
    batchId: `k:${removedAt.getTime()}`,
    hostId: HOST,
    routes: routes.map((r) => ({ device: r.device, routeRevision: r.revision })),
    items: [
      {
        devices: routes.map((r) => r.device),
        payload: {
          case: "keyChanged",
          value: {
            eventId: "0190e8f4-1c7b-7000-8000-000000000001",
            device: alicePhone,
            kind: KeyChangeKind.DEVICE_REMOVED,
            keyVersion: 2n,
            effectiveAt: timestampFromDate(removedAt),
          },
        },
      },
    ],
  });

describe("stream hub: device revocation", () => {
  it("closes a removed device's stream with DEVICE_REVOKED, only when its token predates the removal", async () => {
    const { streams, open } = hub();
    const phone = await open(alicePhone, at(0));
    const laptop = await open(aliceLaptop, at(0));
    // A stream of the device id registered anew (its token issued after the removal) stays.
    expect(streams.revoke(alicePhone, at(-1))).toBe(false);
    expect(phone.isClosed).toBe(false);
    expect(streams.revoke(alicePhone, at(5))).toBe(true);
    const end = await written(phone);
    const close = end.frames.at(-1)?.body;
    expect(close?.case === "close" && close.value.reason).toBe(CloseReason.DEVICE_REVOKED);
    expect(end.error).toMatchObject({ code: "permission_denied", reason: "DEVICE_REVOKED" });
    expect(laptop.isClosed).toBe(false);
    expect(streams.revoke(alicePhone, at(5))).toBe(false);
    laptop.abort();
  });

  it("a pushed KeyChanged DEVICE_REMOVED reaches the removed device, then revokes its stream and is reported", async () => {
    const { streams, open, removals } = hub();
    const phone = await open(alicePhone, at(0));
    const laptop = await open(aliceLaptop, at(0));
    const answer = streams.push(
      removal(
        [
          { device: alicePhone, revision: phone.revision ?? 0n },
          { device: aliceLaptop, revision: laptop.revision ?? 0n },
        ],
        at(10),
      ),
    );
    expect(answer.results?.map((r) => r.outcome)).toEqual([PushOutcome.PUSHED, PushOutcome.PUSHED]);
    expect(removals).toEqual([`alice/phone@${at(10).toISOString()}`]);
    const end = await written(phone);
    expect(end.frames.map((f) => f.body.case)).toEqual(["keyChanged", "close"]);
    expect(laptop.isClosed).toBe(false);
    expect(laptop.queued).toBe(1);
    laptop.abort();
  });
});

describe("stream hub: a device that moved to another host", () => {
  it("closes the older stream here with REPLACED at once, and leaves a newer one alone", async () => {
    const { streams, open } = hub();
    const phone = await open(alicePhone);
    const laptop = await open(aliceLaptop);
    const phoneRevision = phone.revision ?? 0n;
    // An assignment older than this stream's (a route event replayed late) changes nothing.
    expect(streams.routedElsewhere(alicePhone, phoneRevision - 1n)).toBe(false);
    expect(phone.isClosed).toBe(false);
    expect(streams.routedElsewhere(alicePhone, phoneRevision + 10n)).toBe(true);
    const end = await written(phone);
    const close = end.frames.at(-1)?.body;
    expect(close?.case === "close" && close.value.reason).toBe(CloseReason.REPLACED);
    expect(laptop.isClosed).toBe(false);
    expect(streams.routedElsewhere({ userId: "nobody", deviceId: "x" }, 99n)).toBe(false);
    laptop.abort();
  });
});
