import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MessageSchema, ReceiptSchema } from "../../../gen/parley/common/v1/message_pb.ts";
import { BATCH_LIMITS, batchIdOf } from "./dispatch.ts";
import type { PlannedItem } from "./ports.ts";
import { PushCallError } from "./ports.ts";
import type { RoutedWorld } from "./test-fixtures.ts";
import { pushEverything, routedWorld, settle, testDispatcher } from "./test-fixtures.ts";

const source = { id: "r:0190e8f4-1c7b-7000-8000-000000000001", kind: "receipt", checkpoint: true };

function receiptTo(...devices: string[]): PlannedItem {
  return {
    devices: devices.map((d) => {
      const [userId = "", deviceId = ""] = d.split("/");
      return { userId, deviceId };
    }),
    payload: { case: "receipt", value: create(ReceiptSchema, { upToSeq: 1n }) },
    traceparent: "",
  };
}

let world: RoutedWorld;
beforeEach(async () => {
  world = await routedWorld();
});
afterEach(async () => {
  await world.close();
});

describe("dispatcher", () => {
  it("measures each message's time from acceptance to its push, once per device its host took", async () => {
    const h = testDispatcher(world, { now: () => 10_500 });
    h.pusher.answer = (_host, batch) => ({
      results: batch.routes.map((r) => ({
        device: r.device,
        outcome: r.device.userId === "carol" ? "not_connected" : "pushed",
        routeRevision: r.revision,
      })),
      draining: false,
    });
    const message = (to: string): PlannedItem => {
      const [userId = "", deviceId = ""] = to.split("/");
      return {
        devices: [{ userId, deviceId }],
        payload: {
          case: "message",
          value: create(MessageSchema, { messageId: "m1", acceptedAt: timestampFromMs(10_000) }),
        },
        traceparent: "",
      };
    };
    const result = await h.dispatcher.dispatch({ id: "m:m1:0", kind: "message", checkpoint: true }, [
      message("bob/phone"),
      message("alice/laptop"),
      message("carol/tablet"),
      message("erin/phone"),
      receiptTo("bob/phone"),
    ]);
    expect(result).toMatchObject({ pushed: 2, notConnected: 1, offline: 1 });
    // bob and alice: pushed; carol: not connected; erin: offline; the receipt is no message.
    expect(h.counts.pushLatenciesMs).toEqual([500, 500]);
  });

  it("retries a batch that failed UNAVAILABLE with the same batch id and backoff, then succeeds", async () => {
    const h = testDispatcher(world);
    let failures = 2;
    h.pusher.answer = (host, batch) =>
      failures-- > 0 ? new PushCallError("unavailable", true, "UNAVAILABLE") : pushEverything(host, batch);
    const result = await h.dispatcher.dispatch(source, [receiptTo("bob/phone")]);
    expect(result).toMatchObject({ pushed: 1, failed: 0, batches: 1 });
    expect(h.pusher.calls.map((c) => c.batch.batchId)).toEqual([
      `${source.id}@h1#0`,
      `${source.id}@h1#0`,
      `${source.id}@h1#0`,
    ]);
    expect(h.sleeps).toEqual([100, 200]);
    expect(await h.checkpoints.has(`${source.id}@h1#0`)).toBe(true);
  });

  it("gives a batch up at once when its call was already retried as a whole (a merged call)", async () => {
    const h = testDispatcher(world);
    h.pusher.answer = () => new PushCallError("unavailable", true, "UNAVAILABLE", undefined, true);
    const result = await h.dispatcher.dispatch(source, [receiptTo("bob/phone")]);
    expect(result).toMatchObject({ pushed: 0, failed: 1, unreachable: 1 });
    expect([h.pusher.calls.length, h.sleeps]).toEqual([1, []]);
    expect(await h.checkpoints.has(`${source.id}@h1#0`)).toBe(false);
  });

  it("gives up after the last attempt without a checkpoint, and fails that host's next batches at once for a while", async () => {
    let t = 0;
    const h = testDispatcher(world, { now: () => t, hostCooldownMs: 1_000 });
    h.pusher.answer = (host, batch) =>
      host.hostId === "h1"
        ? new PushCallError("unavailable", true, "UNAVAILABLE")
        : pushEverything(host, batch);
    const first = await h.dispatcher.dispatch(source, [receiptTo("bob/phone", "carol/tablet")]);
    expect(first).toMatchObject({ pushed: 1, failed: 1 });
    expect(h.pusher.calls.filter((c) => c.host.hostId === "h1")).toHaveLength(3);
    expect(await h.checkpoints.has(`${source.id}@h1#0`)).toBe(false);
    expect(h.counts.pushes.get("failed")).toBe(1);

    // Cooling down: h1 is not called, other hosts are.
    h.pusher.calls.length = 0;
    const second = await h.dispatcher.dispatch({ ...source, id: "r:2" }, [
      receiptTo("bob/phone", "carol/tablet"),
    ]);
    expect(second).toMatchObject({ pushed: 1, failed: 1 });
    expect(h.pusher.calls.map((c) => c.host.hostId)).toEqual(["h2"]);

    // After the cool-down, h1 is tried again.
    t = 1_000;
    h.pusher.calls.length = 0;
    h.pusher.answer = pushEverything;
    expect(await h.dispatcher.dispatch({ ...source, id: "r:3" }, [receiptTo("bob/phone")])).toMatchObject({
      pushed: 1,
    });
  });

  it("does not retry a refusal (WRONG_HOST, INVALID_ARGUMENT)", async () => {
    const h = testDispatcher(world);
    h.pusher.answer = () => new PushCallError("wrong host", false, "WRONG_HOST");
    expect(await h.dispatcher.dispatch(source, [receiptTo("bob/phone")])).toMatchObject({ failed: 1 });
    expect(h.pusher.calls).toHaveLength(1);
    expect(h.sleeps).toEqual([]);
  });

  it("skips NOT_CONNECTED, STALE_ROUTE and OVERLOADED devices and drops cached routes older than the edge's", async () => {
    const h = testDispatcher(world);
    h.pusher.answer = (_host, batch) => ({
      results: batch.routes.map((r) =>
        r.device.userId === "alice"
          ? { device: r.device, outcome: "stale_route", routeRevision: r.revision + 100n }
          : r.device.userId === "carol"
            ? { device: r.device, outcome: "overloaded", routeRevision: r.revision }
            : { device: r.device, outcome: "not_connected", routeRevision: 0n },
      ),
      draining: false,
    });
    const result = await h.dispatcher.dispatch(source, [
      receiptTo("alice/laptop", "carol/tablet", "dave/phone"),
    ]);
    expect(result).toMatchObject({ pushed: 0, staleRoute: 1, overloaded: 1, notConnected: 1, batches: 1 });
    expect(h.pusher.calls).toHaveLength(1);
    // The batch was answered: it is finished, nothing is retried.
    expect(await h.checkpoints.has(`${source.id}@h2#0`)).toBe(true);
    expect(world.routes.route({ userId: "alice", deviceId: "laptop" })).toBeUndefined();
    expect(world.routes.route({ userId: "carol", deviceId: "tablet" })).toBeDefined();
    expect(world.routes.route({ userId: "dave", deviceId: "phone" })).toBeDefined();

    // The watch brings the device's new route; older puts than the edge's revision stay ignored.
    const lease = world.leases.h1;
    for (let i = 0; i < 150 && lease !== undefined; i++) await lease.assignDevice("alice", "laptop");
    await settle();
    expect(world.routes.route({ userId: "alice", deviceId: "laptop" })?.hostId).toBe("h1");
  });

  it("splits a host's share at the contract's item limit, with one batch id per chunk", async () => {
    const devices = Array.from({ length: 2_500 }, (_, i) => `u${i}/d`);
    const big = await routedWorld({ h1: devices });
    try {
      const h = testDispatcher(big);
      const items = devices.map((d) => receiptTo(d));
      const result = await h.dispatcher.dispatch(source, items);
      expect(result).toMatchObject({ pushed: 2_500, batches: 3 });
      expect(h.pusher.calls.map((c) => c.batch.items.length)).toEqual([1_000, 1_000, 500]);
      expect(h.pusher.calls.map((c) => c.batch.batchId)).toEqual(
        [0, 1, 2].map((i) => `${source.id}@h1#${i}`),
      );
      for (const { batch } of h.pusher.calls) {
        expect(batch.routes.length).toBe(batch.items.length);
        expect(batch.routes.length).toBeLessThanOrEqual(BATCH_LIMITS.routes);
      }
      // Items keep their order across chunks.
      const order = h.pusher.calls.flatMap((c) => c.batch.items.map((i) => i.devices[0]?.userId));
      expect(order).toEqual(devices.map((d) => d.split("/")[0]));
    } finally {
      await big.close();
    }
  });

  it("keeps batch ids within 128 characters, deterministically", () => {
    const host = "h".repeat(128);
    const id = batchIdOf("m:0190e8f4-1c7b-7000-8000-000000000001:0", host, 3);
    expect(id.length).toBeLessThanOrEqual(128);
    expect(id).toBe(batchIdOf("m:0190e8f4-1c7b-7000-8000-000000000001:0", host, 3));
    expect(id).not.toBe(batchIdOf("m:0190e8f4-1c7b-7000-8000-000000000001:0", host, 4));
    expect(batchIdOf("m:x:0", "edge-1", 0)).toBe("m:x:0@edge-1#0");
  });

  it("fails the dispatch when the checkpoint store fails, so the event comes back", async () => {
    const h = testDispatcher(world, {
      checkpoints: {
        has: async () => false,
        record: async () => {
          throw new Error("redis down");
        },
      },
    });
    await expect(h.dispatcher.dispatch(source, [receiptTo("bob/phone")])).rejects.toThrow("redis down");
  });

  it("does not checkpoint ephemeral sources", async () => {
    const h = testDispatcher(world);
    const ephemeral = { id: "pr:alice:5", kind: "presence", checkpoint: false };
    await h.dispatcher.dispatch(ephemeral, [receiptTo("bob/phone")]);
    await h.dispatcher.dispatch(ephemeral, [receiptTo("bob/phone")]);
    expect(h.pusher.calls).toHaveLength(2);
    expect(await h.checkpoints.has(`${ephemeral.id}@h1#0`)).toBe(false);
  });
});
