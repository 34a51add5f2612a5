// Delivery as it runs: the real embedded broker, the in-process registry, delivery's own gRPC
// client, and real EdgePushService servers standing in for edge hosts (each a small recording
// implementation of the contract the edge implements, on a real socket, with the same validation
// every Parley server applies).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DeliveryService, DeviceActivity } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import type { PushBatchRequest } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgePushService, PushOutcome } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgeHostState } from "../../gen/parley/delivery/v1/registry_pb.ts";
import {
  ConversationKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import { MessageStoredSchema } from "../../gen/parley/events/v1/message_events_pb.ts";
import { PresenceState } from "../../gen/parley/events/v1/presence_events_pb.ts";
import type { Broker, BrokerMessage } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { engineTargets } from "../../lib/engines.ts";
import type { ParleyError } from "../../lib/errors.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import { fromGrpcError } from "../../lib/grpc/grpc-error.ts";
import type { GrpcServer } from "../../lib/grpc/server.ts";
import { createGrpcServer } from "../../lib/grpc/server.ts";
import { directConversationId } from "../../lib/ids.ts";
import { createLogger } from "../../lib/logging.ts";
import type { RateLimiter } from "../../lib/rate-limit.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { useRedis } from "../../lib/redis/test-support.ts";
import type { InProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import { createInProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import type { HostLease } from "../../lib/registry/registry.ts";
import type { CheckpointStore } from "./domain/ports.ts";
import type { DeliveryServiceParts } from "./service.ts";
import { createDeliveryService, TYPING_RATE } from "./service.ts";

const logger = createLogger("delivery-service-test", "silent");
const group = "0190e8f4-1c7b-7000-8000-0000000000aa";
const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const targets = engineTargets();

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** An edge host's EdgePushService that records every batch and holds streams for `devices`. */
async function startRecordingEdge(hostId: string, devices: string[]) {
  const held = new Set(devices);
  const batches: PushBatchRequest[] = [];
  const server: GrpcServer = createGrpcServer({
    name: hostId,
    logger,
    services: [
      {
        service: EdgePushService,
        implementation: {
          async pushBatch(request) {
            batches.push(request);
            return {
              results: request.routes.map((route) => {
                const key = `${route.device?.userId}/${route.device?.deviceId}`;
                return {
                  device: route.device,
                  outcome: held.has(key) ? PushOutcome.PUSHED : PushOutcome.NOT_CONNECTED,
                  routeRevision: held.has(key) ? route.routeRevision : 0n,
                };
              }),
              hostState: EdgeHostState.SERVING,
            };
          },
        },
      },
    ],
  });
  const port = await server.listen("127.0.0.1", 0);
  /** (user/device, message id) of every message item pushed, in order. */
  const messages = () =>
    batches.flatMap((b) =>
      b.items.flatMap((item) =>
        item.payload.case === "message"
          ? [
              {
                device: `${item.devices[0]?.userId}/${item.devices[0]?.deviceId}`,
                messageId: item.payload.value.messageId,
                ciphertext: [...item.payload.value.ciphertext],
                cursor: [...item.cursor],
                traceparent: item.traceparent,
              },
            ]
          : [],
      ),
    );
  return { hostId, address: `127.0.0.1:${port}`, batches, messages, stop: () => server.shutdown(100) };
}

type Edge = Awaited<ReturnType<typeof startRecordingEdge>>;

function messageStored(messageId: string, targets: string[]) {
  return create(MessageStoredSchema, {
    message: {
      messageId,
      conversationId: group,
      seq: 1n,
      sender: { userId: "dave", deviceId: "phone" },
      clientMessageId: "0190e8f4-1c7b-7000-8000-0000000000cc",
      kind: 1,
      acceptedAt: timestampFromMs(1_000),
    },
    targets: targets.map((t, i) => {
      const [userId = "", deviceId = ""] = t.split("/");
      return {
        device: { userId, deviceId },
        ciphertext: new Uint8Array([i + 1]),
        cursor: new Uint8Array([0, i]),
      };
    }),
    storedAt: timestampFromMs(1_001),
    part: 0,
    partCount: 1,
    traceparent: TRACEPARENT,
  });
}

async function publishStored(broker: Broker, messageId: string, targets: string[]) {
  await broker.publish(Topics.deliveries, {
    key: group,
    payload: toBinary(MessageStoredSchema, messageStored(messageId, targets)),
    properties: { traceparent: TRACEPARENT },
  });
}

describe("delivery service (embedded broker, in-process registry, real EdgePushService servers)", () => {
  let dir: string;
  let broker: Broker;
  let registry: InProcessRegistry;
  let edgeA: Edge;
  let edgeB: Edge;
  let delivery: DeliveryServiceParts | undefined;
  const cleanup: Array<() => Promise<void> | void> = [];
  const leases = new Map<string, HostLease>();

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "parley-delivery-"));
    broker = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
    registry = createInProcessRegistry({ logger });
    // The edges: alice/phone and bob/phone on A, carol/tablet on B; erin is offline.
    edgeA = await startRecordingEdge("edge-a", ["alice/phone", "bob/phone"]);
    edgeB = await startRecordingEdge("edge-b", ["carol/tablet"]);
    for (const edge of [edgeA, edgeB]) {
      const lease = await registry.registerHost({
        hostId: edge.hostId,
        pushAddress: edge.address,
        publicUrl: `http://${edge.hostId}.example`,
        state: "serving",
        load: 0,
      });
      leases.set(edge.hostId, lease);
      cleanup.push(() => lease.revoke());
      for (const device of edge === edgeA ? ["alice/phone", "bob/phone"] : ["carol/tablet"]) {
        const [userId = "", deviceId = ""] = device.split("/");
        await lease.assignDevice(userId, deviceId);
      }
    }
    delivery = undefined;
  });

  afterEach(async () => {
    await delivery?.stop();
    for (const step of cleanup.splice(0).reverse()) await step();
    await edgeA.stop();
    await edgeB.stop();
    await registry.close();
    await broker.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts delivery; `acked` holds every event its handlers finished, as the broker acks them. */
  async function startDelivery(
    options: { checkpoints?: CheckpointStore; crashOnce?: (message: BrokerMessage) => boolean } = {},
  ) {
    const acked: BrokerMessage[] = [];
    const crashed = new Set<string>();
    delivery = await createDeliveryService({
      broker,
      registry,
      logger,
      redeliveryDelayMs: 10,
      ...(options.checkpoints === undefined ? {} : { checkpoints: options.checkpoints }),
      beforeAck(message) {
        // The worker "dies" after pushing (and checkpointing), before the broker stored the ack.
        if (options.crashOnce?.(message) === true && !crashed.has(message.id)) {
          crashed.add(message.id);
          throw new Error("worker crashed before acknowledging");
        }
        acked.push(message);
      },
    });
    return { acked, crashed };
  }

  /** With the engines on, a Redis for the limiters that workers share (the cluster profile's). */
  const redisContext = targets === undefined ? undefined : useRedis("delivery_service");

  /**
   * A delivery worker with `typingLimiter`, served over gRPC, once its membership view knows the
   * group (alice and bob): `setTyping` answers "ok" or the error's code/reason.
   */
  async function startTypingWorker(typingLimiter: RateLimiter) {
    const worker = await createDeliveryService({ broker, registry, logger, typingLimiter });
    cleanup.push(() => worker.stop());
    const server = createGrpcServer({ name: "delivery", logger, services: worker.registrations });
    const port = await server.listen("127.0.0.1", 0);
    cleanup.push(() => server.shutdown(100));
    const client = createGrpcClient(DeliveryService, `127.0.0.1:${port}`);
    cleanup.push(() => closeChannel(client));
    let refusal: ParleyError | undefined;
    const setTyping = async (device: string) => {
      const [userId = "", deviceId = ""] = device.split("/");
      refusal = undefined;
      try {
        await client.setTyping({ device: { userId, deviceId }, conversationId: group, typing: true });
        return "ok";
      } catch (err) {
        refusal = fromGrpcError(err);
        return `${refusal.code}/${refusal.reason}`;
      }
    };
    return { worker, setTyping, lastRefusal: () => refusal };
  }

  async function publishGroup(members: string[]) {
    await broker.publish(Topics.memberships, {
      key: group,
      payload: toBinary(
        MembershipChangedSchema,
        create(MembershipChangedSchema, {
          eventId: "0190e8f4-1c7b-7000-8000-0000000000e2",
          conversationId: group,
          kind: ConversationKind.GROUP,
          version: 1n,
          members: members.map((userId) => ({ userId, role: MemberRole.MEMBER })),
          changedAt: timestampFromMs(1),
        }),
      ),
    });
  }

  /** Waits until `setTyping(device)` is past the membership check (which comes before the limiter). */
  async function untilMember(setTyping: (device: string) => Promise<string>, device: string) {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const answer = await setTyping(device);
      if (answer !== "not_found/CONVERSATION_NOT_FOUND") return answer;
      if (Date.now() > deadline) throw new Error("timed out waiting for the membership view");
      await sleep(10);
    }
  }

  it("pushes each target device's message, with its ciphertext and cursor, to the host holding it, once", async () => {
    const { acked } = await startDelivery();
    const id = "0190e8f4-1c7b-7000-8000-000000000001";
    await publishStored(broker, id, ["alice/phone", "carol/tablet", "bob/phone", "erin/phone"]);
    await waitFor(() => acked.length === 1, "the event to be handled");

    expect(edgeA.batches).toHaveLength(1);
    expect(edgeB.batches).toHaveLength(1);
    expect(edgeA.batches[0]).toMatchObject({ batchId: `m:${id}:0@edge-a#0`, hostId: "edge-a" });
    expect(edgeB.batches[0]).toMatchObject({ batchId: `m:${id}:0@edge-b#0`, hostId: "edge-b" });
    expect(edgeA.batches[0]?.routes.map((r) => [r.device?.userId, r.routeRevision > 0n])).toEqual([
      ["alice", true],
      ["bob", true],
    ]);
    expect(edgeA.messages()).toEqual([
      { device: "alice/phone", messageId: id, ciphertext: [1], cursor: [0, 0], traceparent: TRACEPARENT },
      { device: "bob/phone", messageId: id, ciphertext: [3], cursor: [0, 2], traceparent: TRACEPARENT },
    ]);
    expect(edgeB.messages()).toEqual([
      { device: "carol/tablet", messageId: id, ciphertext: [2], cursor: [0, 1], traceparent: TRACEPARENT },
    ]);
  });

  it("resends nothing after a worker crashed between pushing and acknowledging: the checkpoint holds", async () => {
    const id = "0190e8f4-1c7b-7000-8000-000000000002";
    const { acked, crashed } = await startDelivery({ crashOnce: () => true });
    await publishStored(broker, id, ["alice/phone", "carol/tablet"]);
    // The broker delivers the event again after the "crash"; this time it is acknowledged.
    await waitFor(() => acked.length === 1, "the redelivered event to be acknowledged");
    expect(crashed.size).toBe(1);
    expect(acked[0]?.redeliveryCount).toBe(1);

    expect(edgeA.messages().map((m) => m.device)).toEqual(["alice/phone"]);
    expect(edgeB.messages().map((m) => m.device)).toEqual(["carol/tablet"]);
    expect(edgeA.batches).toHaveLength(1);
    expect(edgeB.batches).toHaveLength(1);
  });

  it("control: without checkpoints the same crash pushes everything twice", async () => {
    const id = "0190e8f4-1c7b-7000-8000-000000000003";
    const { acked } = await startDelivery({
      crashOnce: () => true,
      checkpoints: { has: async () => false, record: async () => {} },
    });
    await publishStored(broker, id, ["alice/phone", "carol/tablet"]);
    await waitFor(() => acked.length === 1, "the redelivered event to be acknowledged");
    expect(edgeA.messages().map((m) => m.device)).toEqual(["alice/phone", "alice/phone"]);
    expect(edgeB.messages().map((m) => m.device)).toEqual(["carol/tablet", "carol/tablet"]);
  });

  it("delivers an event again while a device's host is unreachable, until the host's lease is gone", async () => {
    await edgeB.stop();
    const { acked } = await startDelivery();
    const first = "0190e8f4-1c7b-7000-8000-000000000004";
    const second = "0190e8f4-1c7b-7000-8000-000000000005";
    await publishStored(broker, first, ["carol/tablet", "alice/phone"]);
    await publishStored(broker, second, ["bob/phone"]);
    // alice's host got the first event; carol's cannot be reached, so the event is not acked.
    await waitFor(() => edgeA.messages().length >= 1, "alice's push");
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Both events share the conversation's key: the second waits behind the first.
    expect(acked).toHaveLength(0);
    // The dead host's lease expires: its routes vanish, carol counts as offline (she will Sync).
    await leases.get("edge-b")?.revoke();
    await waitFor(() => acked.length === 2, "both events to be handled");
    // The redeliveries pushed nothing twice: alice's batch was checkpointed the first time.
    expect(edgeA.messages().map((m) => [m.messageId, m.device])).toEqual([
      [first, "alice/phone"],
      [second, "bob/phone"],
    ]);
  });

  it("serves presence: an update is pushed to the user's contacts' devices, and GetPresence shows it to contacts only", async () => {
    // alice and bob are contacts (a direct conversation); carol shares nothing with alice.
    const direct = directConversationId("alice", "bob");
    await broker.publish(Topics.memberships, {
      key: direct,
      payload: toBinary(
        MembershipChangedSchema,
        create(MembershipChangedSchema, {
          eventId: "0190e8f4-1c7b-7000-8000-0000000000e1",
          conversationId: direct,
          kind: ConversationKind.DIRECT,
          version: 1n,
          members: [
            { userId: "alice", role: MemberRole.MEMBER },
            { userId: "bob", role: MemberRole.MEMBER },
          ],
          changedAt: timestampFromMs(1),
        }),
      ),
    });
    const { acked } = await startDelivery();
    // The membership event itself is pushed to both members.
    await waitFor(() => acked.some((m) => m.topic === Topics.memberships), "the membership push");

    const server = createGrpcServer({ name: "delivery", logger, services: delivery?.registrations ?? [] });
    const port = await server.listen("127.0.0.1", 0);
    cleanup.push(() => server.shutdown(100));
    const client = createGrpcClient(DeliveryService, `127.0.0.1:${port}`);
    cleanup.push(() => closeChannel(client));

    await client.updatePresence({
      hostId: "edge-b",
      updates: [{ device: { userId: "alice", deviceId: "laptop" }, activity: DeviceActivity.ACTIVE }],
      ttl: durationFromMs(30_000),
    });
    const presenceItems = () =>
      [...edgeA.batches, ...edgeB.batches].flatMap((b) =>
        b.items.filter((i) => i.payload.case === "presence"),
      );
    await waitFor(() => presenceItems().length === 1, "the presence push");
    const [item] = presenceItems();
    expect(item?.devices.map((d) => `${d.userId}/${d.deviceId}`)).toEqual(["bob/phone"]);
    expect(item?.payload.value).toMatchObject({ userId: "alice", state: PresenceState.ONLINE });

    const forBob = await client.getPresence({
      device: { userId: "bob", deviceId: "phone" },
      userIds: ["alice"],
    });
    expect(forBob.presences.map((p) => [p.userId, p.state])).toEqual([["alice", PresenceState.ONLINE]]);
    const forCarol = await client.getPresence({
      device: { userId: "carol", deviceId: "tablet" },
      userIds: ["alice"],
    });
    expect(forCarol.presences).toEqual([]);
  });

  it("consults the typing limiter it is given, and leaves closing it to the caller", async () => {
    await publishGroup(["alice", "bob"]);
    const takes: string[] = [];
    const refusing = {
      async take(key: string, cost = 1) {
        takes.push(`${key} x${cost}`);
        return { allowed: false, retryAfterMs: 2_500 } as const;
      },
      close: vi.fn(),
    };
    const { worker, setTyping, lastRefusal } = await startTypingWorker(refusing);
    expect(await untilMember(setTyping, "alice/phone")).toBe("resource_exhausted/RATE_LIMITED");
    expect(lastRefusal()?.retryDelayMs).toBe(2_500);
    expect(takes).toEqual(["alice/phone x1"]);
    await worker.stop();
    expect(refusing.close).not.toHaveBeenCalled();
  });

  it.runIf(redisContext !== undefined)(
    "workers on the cluster's Redis limiter share one typing budget per device",
    async () => {
      const redis = redisContext?.redis;
      if (redis === undefined) throw new Error("needs Redis");
      await publishGroup(["alice", "bob"]);
      // One key prefix, as every worker of a deployment gets from its main; the clock stands
      // still, so nothing refills while the test runs (refilling is the adapter's own test).
      const keyPrefix = redisContext?.prefix() ?? "";
      const t = Date.now();
      const limiter = () => createRedisRateLimiter(redis, TYPING_RATE, { keyPrefix, now: () => t });
      const workers = [await startTypingWorker(limiter()), await startTypingWorker(limiter())];
      // bob's bucket, not alice's, pays for waiting on each worker's membership view.
      for (const { setTyping } of workers) expect(await untilMember(setTyping, "bob/phone")).toBe("ok");
      const answers: string[] = [];
      for (let i = 0; i < TYPING_RATE.burst + 2; i++) {
        answers.push(await (workers[i % 2]?.setTyping("alice/phone") ?? "no worker"));
      }
      expect(answers).toEqual([
        ...Array<string>(TYPING_RATE.burst).fill("ok"),
        "resource_exhausted/RATE_LIMITED",
        "resource_exhausted/RATE_LIMITED",
      ]);
      expect(workers[1]?.lastRefusal()?.retryDelayMs).toBe(1_000);
    },
  );
});
