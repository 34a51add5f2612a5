import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { v7 as uuidv7 } from "uuid";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import {
  ConversationKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import { KeyChangedSchema, KeyChangeKind } from "../../gen/parley/events/v1/key_events_pb.ts";
import type { MessageStored, ResendRequested } from "../../gen/parley/events/v1/message_events_pb.ts";
import {
  MessageAcceptedSchema,
  MessageStoredSchema,
  ResendRequestedSchema,
} from "../../gen/parley/events/v1/message_events_pb.ts";
import type { ReceiptRecorded } from "../../gen/parley/events/v1/receipt_events_pb.ts";
import { ReceiptRecordedSchema } from "../../gen/parley/events/v1/receipt_events_pb.ts";
import { SeqOrder } from "../../gen/parley/history/v1/history_pb.ts";
import { HistoryService } from "../../gen/parley/history/v1/history_service_pb.ts";
import type { Subscription } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import type { EmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { engineTargets } from "../../lib/engines.ts";
import type { ParleyError } from "../../lib/errors.ts";
import { parleyErrorFromStatus } from "../../lib/errors.ts";
import type { GrpcServiceClient } from "../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import { fromGrpcError } from "../../lib/grpc/grpc-error.ts";
import type { GrpcServer } from "../../lib/grpc/server.ts";
import { createGrpcServer } from "../../lib/grpc/server.ts";
import { createLogger } from "../../lib/logging.ts";
import type { RateLimiter } from "../../lib/rate-limit.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { useRedis } from "../../lib/redis/test-support.ts";
import type { HistoryServiceParts } from "./service.ts";
import { createHistoryService, DEFAULT_RESEND_RATE } from "./service.ts";

const logger = createLogger("history-test", "silent");
const targets = engineTargets();
/** gRPC decodes bytes into Node Buffers; compare them as plain Uint8Arrays. */
const bytes = (value: Uint8Array | undefined) => new Uint8Array(value ?? []);

async function waitFor(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function grpcFailure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    const parley = fromGrpcError(err);
    return `${parley.code}/${parley.reason}`;
  }
  return "no error";
}

/** The ParleyError a gRPC call failed with (a call that succeeds fails the test). */
async function grpcRefusal(promise: Promise<unknown>): Promise<ParleyError> {
  try {
    await promise;
  } catch (err) {
    return fromGrpcError(err);
  }
  throw new Error("the call succeeded");
}

const phone = (userId: string) => ({ userId, deviceId: "phone" });
const laptop = (userId: string) => ({ userId, deviceId: "laptop" });

describe("history service over gRPC", () => {
  let dir: string;
  let broker: EmbeddedBroker;
  let history: HistoryServiceParts;
  let server: GrpcServer;
  let client: GrpcServiceClient<typeof HistoryService>;
  let following: Subscription[];
  let stored: MessageStored[];
  let receipts: ReceiptRecorded[];
  let resends: ResendRequested[];
  const group = uuidv7();
  const messageIds: string[] = [];

  const publishMembership = async (conversationId: string, members: string[], version: bigint) => {
    const event = create(MembershipChangedSchema, {
      eventId: uuidv7(),
      conversationId,
      kind: ConversationKind.GROUP,
      version,
      members: members.map((userId) => ({ userId, role: MemberRole.MEMBER })),
      changedAt: timestampFromDate(new Date()),
    });
    await broker.publish(Topics.memberships, {
      key: conversationId,
      payload: toBinary(MembershipChangedSchema, event),
    });
  };

  const publishAccepted = async (sender: { userId: string; deviceId: string }, messageId = uuidv7()) => {
    const event = create(MessageAcceptedSchema, {
      messageId,
      conversationId: group,
      sender,
      clientMessageId: uuidv7(),
      envelope: {
        kind: ContentKind.TEXT,
        payload: {
          case: "perDevice",
          value: {
            recipients: [
              { userId: "bob", devices: [{ deviceId: "phone", ciphertext: new Uint8Array([0xb0]) }] },
              { userId: "carol", devices: [{ deviceId: "phone", ciphertext: new Uint8Array([0xc0]) }] },
            ],
          },
        },
      },
      acceptedAt: timestampFromDate(new Date()),
      recipientDevices: [phone("bob"), phone("carol")],
      membershipVersion: 1n,
    });
    await broker.publish(Topics.messages, { key: group, payload: toBinary(MessageAcceptedSchema, event) });
    return messageId;
  };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "parley-history-service-"));
    broker = await createEmbeddedBroker({ path: join(dir, "broker.db"), logger });
    stored = [];
    receipts = [];
    resends = [];
    following = [
      await broker.follow(Topics.deliveries, {}, (m) => {
        stored.push(fromBinary(MessageStoredSchema, m.payload));
      }),
      await broker.follow(Topics.receipts, {}, (m) => {
        receipts.push(fromBinary(ReceiptRecordedSchema, m.payload));
      }),
      await broker.follow(Topics.resends, {}, (m) => {
        resends.push(fromBinary(ResendRequestedSchema, m.payload));
      }),
    ];
    await publishMembership(group, ["alice", "bob", "carol"], 1n);
    history = await createHistoryService({
      dbPath: join(dir, "parley.db"),
      broker,
      logger,
      redeliveryDelayMs: 20,
    });
    server = createGrpcServer({ name: "history", services: history.registrations, logger });
    const port = await server.listen("127.0.0.1", 0);
    client = createGrpcClient(HistoryService, `127.0.0.1:${port}`);

    messageIds.splice(0);
    for (let i = 0; i < 5; i++) messageIds.push(await publishAccepted(phone("alice")));
    await waitFor(() => stored.length === 5, "five MessageStored");
    // The membership view follows the broker: wait until it knows the group.
    await waitFor(
      async () =>
        (await grpcFailure(client.listMessages({ device: phone("bob"), conversationId: group }))) ===
        "no error",
      "the membership view",
    );
  });

  /** With the engines on, a Redis for the limiters that replicas share (the cluster profile's). */
  const redisContext = targets === undefined ? undefined : useRedis("history_service");

  /** A second history process on the same broker (its own SQLite file), with `resendLimiter`. */
  const startReplica = async (name: string, resendLimiter: RateLimiter) => {
    const replica = await createHistoryService({
      dbPath: join(dir, `${name}.db`),
      broker,
      logger,
      resendLimiter,
    });
    // Its membership view catches up from the broker: until then the group is unknown to it.
    await waitFor(
      async () =>
        (await grpcFailure(
          replica.history.listMessages({
            device: phone("carol"),
            conversationId: group,
            afterSeq: 0,
            beforeSeq: 0,
            order: "oldest_first",
            pageSize: 1,
            pageToken: "",
          }),
        )) === "no error",
      `${name}'s membership view`,
    );
    return replica;
  };

  afterEach(async () => {
    closeChannel(client);
    await server.shutdown();
    await history.stop();
    for (const f of following) await f.close();
    await broker.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("syncs a device's inbox in pages with `more`, cursors matching the pushed ones, and watermarks", async () => {
    const seen: bigint[] = [];
    const cursors: Uint8Array[] = [];
    let cursor = new Uint8Array();
    const mores: boolean[] = [];
    for (;;) {
      const page = await client.sync({ device: phone("bob"), cursor, pageSize: 2 });
      for (const item of page.items) {
        if (item.item.case !== "message") throw new Error("expected messages only");
        seen.push(item.item.value.seq);
        expect(bytes(item.item.value.ciphertext)).toEqual(new Uint8Array([0xb0]));
        cursors.push(bytes(item.cursor));
      }
      mores.push(page.more);
      expect(page.watermarks.map((w) => [w.conversationId, w.lastSeq])).toEqual(
        page.items.length > 0 ? [[group, 5n]] : [],
      );
      cursor = bytes(page.nextCursor);
      if (!page.more) break;
    }
    expect(seen).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(mores).toEqual([true, true, false]);
    // The cursor each MessageStored carried for bob's phone is the one Sync gives.
    const pushed = stored.map((s) => bytes(s.targets.find((t) => t.device?.userId === "bob")?.cursor));
    expect(pushed).toEqual(cursors);
    // Resuming after the last cursor: nothing, and the cursor comes back.
    const after = await client.sync({ device: phone("bob"), cursor });
    expect([after.items.length, after.more, bytes(after.nextCursor)]).toEqual([0, false, cursor]);
  });

  it("drops a device's inbox when chat.keys says it was removed, and only that device's", async () => {
    const publishKeyChanged = (device: { userId: string; deviceId: string }, kind: KeyChangeKind) =>
      broker.publish(Topics.keys, {
        key: device.userId,
        payload: toBinary(
          KeyChangedSchema,
          create(KeyChangedSchema, {
            eventId: uuidv7(),
            device,
            kind,
            keyVersion: 2n,
            effectiveAt: timestampFromDate(new Date()),
          }),
        ),
      });
    expect((await client.sync({ device: phone("bob") })).items).toHaveLength(5);
    // Other kinds change nothing.
    await publishKeyChanged(phone("bob"), KeyChangeKind.IDENTITY_ROTATED);
    await publishKeyChanged(phone("bob"), KeyChangeKind.DEVICE_REMOVED);
    await waitFor(
      async () => (await client.sync({ device: phone("bob") })).items.length === 0,
      "bob's inbox dropped",
    );
    expect((await client.sync({ device: phone("carol") })).items).toHaveLength(5);
  });

  it("refuses another device's cursor with INVALID_CURSOR", async () => {
    const page = await client.sync({ device: phone("bob"), pageSize: 1 });
    expect(await grpcFailure(client.sync({ device: laptop("bob"), cursor: page.nextCursor }))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
    expect(await grpcFailure(client.sync({ device: phone("carol"), cursor: page.nextCursor }))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
    expect(await grpcFailure(client.sync({ device: phone("bob"), cursor: new Uint8Array([1, 2, 3]) }))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
  });

  it("lists messages to members only: NOT_FOUND for non-members and unknown conversations", async () => {
    const page = await client.listMessages({
      device: phone("carol"),
      conversationId: group,
      order: SeqOrder.OLDEST_FIRST,
      pageSize: 3,
    });
    expect(page.messages.map((m) => [m.seq, bytes(m.ciphertext)[0]])).toEqual([
      [1n, 0xc0],
      [2n, 0xc0],
      [3n, 0xc0],
    ]);
    expect(page.lastSeq).toBe(5n);
    const next = await client.listMessages({
      device: phone("carol"),
      conversationId: group,
      order: SeqOrder.OLDEST_FIRST,
      pageSize: 3,
      pageToken: page.nextPageToken,
    });
    expect([next.messages.map((m) => m.seq), next.nextPageToken]).toEqual([[4n, 5n], ""]);
    // alice sent them pairwise to others: listed for her without a ciphertext, seqs contiguous.
    const own = await client.listMessages({ device: phone("alice"), conversationId: group });
    expect(own.messages.map((m) => [m.seq, m.ciphertext.length])).toEqual([
      [5n, 0],
      [4n, 0],
      [3n, 0],
      [2n, 0],
      [1n, 0],
    ]);
    expect(await grpcFailure(client.listMessages({ device: phone("mallory"), conversationId: group }))).toBe(
      "not_found/CONVERSATION_NOT_FOUND",
    );
    expect(await grpcFailure(client.listMessages({ device: phone("bob"), conversationId: uuidv7() }))).toBe(
      "not_found/CONVERSATION_NOT_FOUND",
    );
    // A member who leaves loses access.
    await publishMembership(group, ["alice", "bob"], 2n);
    await waitFor(
      async () =>
        (await grpcFailure(client.listMessages({ device: phone("carol"), conversationId: group }))) !==
        "no error",
      "carol's removal",
    );
    expect(await grpcFailure(client.listMessages({ device: phone("carol"), conversationId: group }))).toBe(
      "not_found/CONVERSATION_NOT_FOUND",
    );
    expect(
      await grpcFailure(
        client.listMessages({ device: phone("bob"), conversationId: group, afterSeq: 3n, beforeSeq: 2n }),
      ),
    ).toBe("invalid_argument/VALIDATION_FAILED");
  });

  /**
   * What bob reading up to seq 3 and carol's device getting message 2 leave: two ReceiptRecorded
   * (bob's to alice and bob's other devices, carol's to alice), seqs 1-3 out of bob's inbox, and
   * both receipts in alice's.
   */
  async function expectBobReadAndCarolGotOne() {
    await waitFor(() => receipts.length === 2, "two ReceiptRecorded");
    expect(receipts.map((r) => [r.receipt?.kind, r.receipt?.upToSeq, r.notifyUserIds])).toEqual([
      [ReceiptKind.READ, 3n, ["alice", "bob"]],
      [ReceiptKind.DELIVERED, 0n, ["alice"]],
    ]);
    // bob's phone no longer has seqs 1-3; alice's phone has the receipts addressed to her.
    const inbox = await client.sync({ device: phone("bob") });
    expect(inbox.items.map((i) => (i.item.case === "message" ? i.item.value.seq : 0n))).toEqual([4n, 5n]);
    const alice = await client.sync({ device: phone("alice") });
    expect(alice.items.map((i) => (i.item.case === "receipt" ? i.item.value.reader?.userId : ""))).toEqual([
      "bob",
      "carol",
    ]);
  }

  it("records MarkRead, shows it in GetReceipts, publishes ReceiptRecorded, and clears the inbox", async () => {
    const read = await client.markRead({
      device: phone("bob"),
      conversationId: group,
      target: { case: "upToSeq", value: 3n },
    });
    expect(read.recorded).toBe(true);
    expect(read.state).toMatchObject({ deliveredUpToSeq: 3n, readUpToSeq: 3n });
    const again = await client.markRead({
      device: phone("bob"),
      conversationId: group,
      target: { case: "upToSeq", value: 2n },
    });
    expect(again.recorded).toBe(false);
    const delivered = await client.markDelivered({
      device: phone("carol"),
      conversationId: group,
      target: { case: "messageIds", value: { messageIds: [messageIds[1] as string] } },
    });
    expect(delivered.state).toMatchObject({ deliveredUpToSeq: 0n, readUpToSeq: 0n });

    const byConversation = await client.getReceipts({ device: phone("alice"), conversationId: group });
    expect(
      byConversation.members.map((m) => [
        m.userId,
        m.state?.deliveredUpToSeq,
        m.state?.readUpToSeq,
        m.readAt !== undefined,
      ]),
    ).toEqual([
      ["alice", 0n, 0n, false],
      ["bob", 3n, 3n, true],
      ["carol", 0n, 0n, false],
    ]);
    const byMessage = await client.getReceipts({
      device: phone("alice"),
      conversationId: group,
      messageId: messageIds[1] as string,
      pageSize: 1,
    });
    expect(
      byMessage.members.map((m) => [m.userId, m.deliveredAt !== undefined, m.readAt !== undefined]),
    ).toEqual([["bob", true, true]]);
    expect([
      byMessage.messageSeq,
      byMessage.recipientCount,
      byMessage.deliveredCount,
      byMessage.readCount,
    ]).toEqual([2n, 2, 2, 1]);
    const second = await client.getReceipts({
      device: phone("alice"),
      conversationId: group,
      messageId: messageIds[1] as string,
      pageSize: 1,
      pageToken: byMessage.nextPageToken,
    });
    expect([
      second.members.map((m) => [m.userId, m.deliveredAt !== undefined, m.readAt !== undefined]),
      second.nextPageToken,
    ]).toEqual([[["carol", true, false]], ""]);
    expect(
      await grpcFailure(
        client.getReceipts({ device: phone("alice"), conversationId: group, messageId: uuidv7() }),
      ),
    ).toBe("not_found/MESSAGE_NOT_FOUND");

    await expectBobReadAndCarolGotOne();
  });

  it("records a RecordAcknowledgements batch as its single calls would, each answered on its own", async () => {
    const response = await client.recordAcknowledgements({
      acknowledgements: [
        {
          kind: {
            case: "read",
            value: { device: phone("bob"), conversationId: group, target: { case: "upToSeq", value: 3n } },
          },
        },
        // Not a member: refused alone, as MarkDelivered would refuse it.
        {
          kind: {
            case: "delivered",
            value: {
              device: phone("mallory"),
              conversationId: group,
              target: { case: "upToSeq", value: 1n },
            },
          },
        },
        {
          kind: {
            case: "delivered",
            value: {
              device: phone("carol"),
              conversationId: group,
              target: { case: "messageIds", value: { messageIds: [messageIds[1] as string] } },
            },
          },
        },
        // Already covered by the first: taken, nothing recorded.
        {
          kind: {
            case: "read",
            value: { device: laptop("bob"), conversationId: group, target: { case: "upToSeq", value: 2n } },
          },
        },
      ],
    });
    const outcomes = response.outcomes.map(({ outcome }) =>
      outcome.case === "result"
        ? [outcome.value.recorded, outcome.value.state?.deliveredUpToSeq, outcome.value.state?.readUpToSeq]
        : outcome.case === "error"
          ? [outcome.value.code, outcome.value.message]
          : [],
    );
    const single = await grpcRefusal(
      client.markDelivered({
        device: phone("mallory"),
        conversationId: group,
        target: { case: "upToSeq", value: 1n },
      }),
    );
    expect(single.code).toBe("not_found");
    expect(outcomes).toEqual([
      [true, 3n, 3n],
      [5, single.message],
      [true, 0n, 0n],
      [false, 3n, 3n],
    ]);
    const refusal = response.outcomes[1]?.outcome;
    expect(
      refusal?.case === "error" &&
        parleyErrorFromStatus(refusal.value.code, refusal.value.message, refusal.value.details).reason,
    ).toBe("CONVERSATION_NOT_FOUND");

    // The same events and inboxes as the single calls leave (previous test).
    await expectBobReadAndCarolGotOne();

    // A request that breaks its rules fails as a whole.
    expect(await grpcFailure(client.recordAcknowledgements({ acknowledgements: [] }))).toBe(
      "invalid_argument/VALIDATION_FAILED",
    );
    // A bad field in one acknowledgement: its conversation id, or its traceparent.
    for (const [conversationId, traceparent] of [
      ["nope", ""],
      [group, "not-a-traceparent"],
    ]) {
      expect(
        await grpcFailure(
          client.recordAcknowledgements({
            acknowledgements: [
              {
                kind: {
                  case: "delivered",
                  value: { device: phone("bob"), conversationId, target: { case: "upToSeq", value: 1n } },
                },
                traceparent,
              },
            ],
          }),
        ),
      ).toBe("invalid_argument/VALIDATION_FAILED");
    }
  });

  it("publishes ResendRequested for a message addressed to the device, and refuses others", async () => {
    const identityKey = new Uint8Array(33).fill(7);
    identityKey[0] = 5;
    await client.requestResend({
      device: phone("bob"),
      conversationId: group,
      messageId: messageIds[0] as string,
      identityKey,
    });
    await waitFor(() => resends.length === 1, "the ResendRequested");
    expect(resends[0]).toMatchObject({
      messageId: messageIds[0],
      requester: { userId: "bob", deviceId: "phone" },
      sender: { userId: "alice", deviceId: "phone" },
    });
    expect(
      await grpcFailure(
        client.requestResend({
          device: laptop("bob"),
          conversationId: group,
          messageId: messageIds[0] as string,
          identityKey,
        }),
      ),
    ).toBe("not_found/MESSAGE_NOT_FOUND");
  });

  it("consults the RequestResend limiter it is given, and leaves closing it to the caller", async () => {
    const takes: string[] = [];
    const refusing = {
      async take(key: string, cost = 1) {
        takes.push(`${key} x${cost}`);
        return { allowed: false, retryAfterMs: 4_321 } as const;
      },
      close: vi.fn(),
    };
    const replica = await startReplica("replica", refusing);
    const replicaServer = createGrpcServer({
      name: "history-replica",
      services: replica.registrations,
      logger,
    });
    const replicaClient = createGrpcClient(
      HistoryService,
      `127.0.0.1:${await replicaServer.listen("127.0.0.1", 0)}`,
    );
    try {
      const request = {
        device: phone("bob"),
        conversationId: group,
        messageId: messageIds[0] as string,
        identityKey: new Uint8Array(33).fill(5),
      };
      const refusal = await grpcRefusal(replicaClient.requestResend(request));
      expect([refusal.code, refusal.reason, refusal.retryDelayMs]).toEqual([
        "resource_exhausted",
        "RATE_LIMITED",
        4_321,
      ]);
      expect(takes).toEqual(["bob/phone x1"]);
      // The first service keeps its own (in-memory) limiter, which has nothing against bob.
      await client.requestResend(request);
      await waitFor(() => resends.length === 1, "the first service's ResendRequested");
      expect(takes).toHaveLength(1);
    } finally {
      closeChannel(replicaClient);
      await replicaServer.shutdown();
      await replica.stop();
    }
    expect(refusing.close).not.toHaveBeenCalled();
  });

  it.runIf(redisContext !== undefined)(
    "replicas on the cluster's Redis limiter share one RequestResend budget per device",
    async () => {
      const redis = redisContext?.redis;
      if (redis === undefined) throw new Error("needs Redis");
      // One key prefix, as every history process of a deployment gets from its main.
      const keyPrefix = redisContext?.prefix() ?? "";
      const replicas = [
        await startReplica("replica-a", createRedisRateLimiter(redis, DEFAULT_RESEND_RATE, { keyPrefix })),
        await startReplica("replica-b", createRedisRateLimiter(redis, DEFAULT_RESEND_RATE, { keyPrefix })),
      ];
      try {
        const outcomes: string[] = [];
        for (let i = 0; i < DEFAULT_RESEND_RATE.burst + 2; i++) {
          const replica = replicas[i % 2] as HistoryServiceParts;
          outcomes.push(
            await grpcFailure(
              replica.history.requestResend({
                device: phone("bob"),
                conversationId: group,
                // Neither replica stored it: past the limiter, a request is MESSAGE_NOT_FOUND.
                messageId: messageIds[0] as string,
                identityKey: new Uint8Array(33).fill(5),
                traceparent: "",
              }),
            ),
          );
        }
        // Not twice the burst: the bucket is one, in Redis.
        expect(outcomes).toEqual([
          ...Array<string>(DEFAULT_RESEND_RATE.burst).fill("not_found/MESSAGE_NOT_FOUND"),
          "resource_exhausted/RATE_LIMITED",
          "resource_exhausted/RATE_LIMITED",
        ]);
      } finally {
        for (const replica of replicas) await replica.stop();
      }
    },
  );
});
