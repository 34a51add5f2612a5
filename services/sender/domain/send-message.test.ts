import { create } from "@bufbuild/protobuf";
import { beforeEach, describe, expect, it } from "vitest";
import type { Envelope } from "../../../gen/parley/common/v1/envelope_pb.ts";
import { ContentKind, EnvelopeSchema } from "../../../gen/parley/common/v1/envelope_pb.ts";
import { ParleyError } from "../../../lib/errors.ts";
import { createMemoryRateLimiter } from "../../../lib/rate-limit.ts";
import { ConversationView } from "../../../lib/views/conversation-view.ts";
import { createMemoryIdempotencyStore } from "../adapters/memory/idempotency-store.ts";
import type { AcceptedMessage, DeviceDirectory, MembershipSource } from "./ports.ts";
import type { SendCommand } from "./send-message.ts";
import { createSendMessage } from "./send-message.ts";

const direct = "00000000-0000-5000-8000-000000000001";
const group = "00000000-0000-7000-8000-000000000002";

// The device lists the key service would answer (the domain only sees the port).
const devicesOf: Record<string, string[]> = { alice: ["phone", "laptop"], bob: ["phone"], carol: ["tablet"] };
const deviceDirectory: DeviceDirectory = {
  async activeDevices(_asking, users) {
    return new Map(users.map((u) => [u, devicesOf[u] ?? []]));
  },
};

function sharedEnvelope(text = "hello"): Envelope {
  return create(EnvelopeSchema, {
    kind: ContentKind.TEXT,
    payload: { case: "shared", value: { ciphertext: new TextEncoder().encode(text) } },
  });
}

function pairwise(devices: Record<string, string[]>, kind: number = ContentKind.TEXT): Envelope {
  return create(EnvelopeSchema, {
    kind: kind as Envelope["kind"],
    payload: {
      case: "perDevice",
      value: {
        recipients: Object.entries(devices).map(([userId, ids]) => ({
          userId,
          devices: ids.map((deviceId) => ({ deviceId, ciphertext: new Uint8Array([1, 2, 3]) })),
        })),
      },
    },
  });
}

let view: ConversationView;
let published: AcceptedMessage[];
let blockedDrops: Array<{ kind: string; recipients: number }>;
let ids: number;
let send: ReturnType<typeof createSendMessage>;

beforeEach(() => {
  view = new ConversationView();
  view.applyMembership({
    conversationId: direct,
    kind: "direct",
    version: 1n,
    memberUserIds: ["alice", "bob"],
    deleted: false,
  });
  view.applyMembership({
    conversationId: group,
    kind: "group",
    version: 3n,
    memberUserIds: ["alice", "bob", "carol"],
    deleted: false,
  });
  published = [];
  blockedDrops = [];
  ids = 0;
  send = createSendMessage({
    conversations: view,
    devices: deviceDirectory,
    idempotency: createMemoryIdempotencyStore(),
    rateLimiter: createMemoryRateLimiter({ burst: 5, perSecond: 1 }, { now: () => 0 }),
    publisher: {
      async publish(message) {
        published.push(message);
      },
    },
    metrics: { blockedSenderDrops: (kind, recipients) => blockedDrops.push({ kind, recipients }) },
    newMessageId: () => `m-${++ids}`,
    now: () => new Date(1_000),
  });
});

function command(overrides: Partial<SendCommand> = {}): SendCommand {
  return {
    sender: { userId: "alice", deviceId: "phone" },
    conversationId: group,
    clientMessageId: "c1",
    envelope: sharedEnvelope(),
    forceTrace: false,
    ...overrides,
  };
}

async function refusal(promise: Promise<unknown>): Promise<ParleyError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ParleyError);
  return err as ParleyError;
}

describe("sending", () => {
  it("addresses every device of every member except the sending device, with the membership version", async () => {
    const outcome = await send(command());
    expect(outcome).toEqual({ messageId: "m-1", acceptedAt: new Date(1_000), duplicate: false });
    expect(published).toHaveLength(1);
    const devices = published[0]?.recipientDevices.map((d) => `${d.userId}/${d.deviceId}`).sort();
    expect(devices).toEqual(["alice/laptop", "bob/phone", "carol/tablet"]);
    expect(published[0]?.membershipVersion).toBe(3n);
  });

  it("answers a retry with the original id and publishes once", async () => {
    const first = await send(command());
    const again = await send(command());
    expect(again).toEqual({ ...first, duplicate: true });
    expect(published).toHaveLength(1);
  });

  it("publishes once when two retries race", async () => {
    const [a, b] = await Promise.all([send(command()), send(command())]);
    expect(a.messageId).toBe(b.messageId);
    expect(published).toHaveLength(1);
  });

  it("publishes a failed send again under the same id when the client retries, without charging the rate again", async () => {
    const idempotency = createMemoryIdempotencyStore();
    let failNext = true;
    const attempts: AcceptedMessage[] = [];
    const flaky = createSendMessage({
      conversations: view,
      devices: deviceDirectory,
      idempotency,
      // One send's worth of budget: the retry of the reserved message must not need another.
      rateLimiter: createMemoryRateLimiter({ burst: 1, perSecond: 0.001 }, { now: () => 0 }),
      publisher: {
        async publish(message) {
          attempts.push(message);
          if (failNext) {
            failNext = false;
            throw new Error("broker unreachable");
          }
        },
      },
      metrics: { blockedSenderDrops: () => {} },
      newMessageId: () => `m-${++ids}`,
    });
    await expect(flaky(command())).rejects.toThrow("broker unreachable");
    const retried = await flaky(command());
    expect(attempts.map((m) => m.messageId)).toEqual(["m-1", "m-1"]);
    expect(retried).toMatchObject({ messageId: "m-1", duplicate: true });
    expect(await flaky(command())).toMatchObject({ messageId: "m-1", duplicate: true });
    expect(attempts).toHaveLength(2);
  });

  it("after a restart, a retry gets the id reserved before the crash, and other content is refused", async () => {
    const idempotency = createMemoryIdempotencyStore();
    const senderWith = (publish: (m: AcceptedMessage) => Promise<void>, newMessageId: () => string) =>
      createSendMessage({
        conversations: view,
        devices: deviceDirectory,
        idempotency,
        rateLimiter: createMemoryRateLimiter({ burst: 5, perSecond: 1 }, { now: () => 0 }),
        publisher: { publish },
        metrics: { blockedSenderDrops: () => {} },
        newMessageId,
      });
    // The process dies while publishing: the id was reserved, the publish never confirmed.
    const crashing = senderWith(
      () => new Promise(() => {}),
      () => "m-before-crash",
    );
    void crashing(command());
    await new Promise((resolve) => setTimeout(resolve, 10));
    const restarted = senderWith(
      async (m) => void published.push(m),
      () => "m-after-restart",
    );
    expect(await restarted(command())).toMatchObject({ messageId: "m-before-crash", duplicate: true });
    expect(published.map((m) => m.messageId)).toEqual(["m-before-crash"]);
    const reused = await refusal(restarted(command({ envelope: sharedEnvelope("other") })));
    expect(reused.reason).toBe("CLIENT_MESSAGE_ID_REUSED");
  });

  it("refuses the same client_message_id with different content", async () => {
    await send(command());
    const err = await refusal(send(command({ envelope: sharedEnvelope("other") })));
    expect([err.code, err.reason]).toEqual(["already_exists", "CLIENT_MESSAGE_ID_REUSED"]);
    expect(err.metadata.messageId).toBe("m-1");
  });

  it("refuses a conversation the sender is not in as not found", async () => {
    const err = await refusal(send(command({ sender: { userId: "dave", deviceId: "d" } })));
    expect([err.code, err.reason]).toEqual(["not_found", "CONVERSATION_NOT_FOUND"]);
    const unknown = await refusal(send(command({ conversationId: "00000000-0000-7000-8000-00000000ffff" })));
    expect(unknown.code).toBe("not_found");
    expect(published).toHaveLength(0);
  });

  it("refuses a 1:1 message to a user who blocks the sender, and counts it", async () => {
    view.applyBlock({ blocker: "bob", blocked: "alice", isBlocked: true, version: 1n });
    const err = await refusal(
      send(command({ conversationId: direct, envelope: pairwise({ bob: ["phone"], alice: ["laptop"] }) })),
    );
    expect([err.code, err.reason]).toEqual(["permission_denied", "RECIPIENT_REFUSES"]);
    expect(blockedDrops).toEqual([{ kind: "direct", recipients: 1 }]);
    expect(published).toHaveLength(0);
  });

  it("still refuses after the block deleted the conversation, and accepts again after unblock", async () => {
    view.applyBlock({ blocker: "bob", blocked: "alice", isBlocked: true, version: 1n });
    view.applyMembership({
      conversationId: direct,
      kind: "direct",
      version: 2n,
      memberUserIds: [],
      deleted: true,
    });
    expect((await refusal(send(command({ conversationId: direct })))).code).toBe("permission_denied");
    view.applyBlock({ blocker: "bob", blocked: "alice", isBlocked: false, version: 2n });
    expect((await refusal(send(command({ conversationId: direct, clientMessageId: "c2" })))).code).toBe(
      "not_found",
    );
  });

  it("leaves out the devices of group members who block the sender, and counts them once", async () => {
    view.applyBlock({ blocker: "carol", blocked: "alice", isBlocked: true, version: 1n });
    await send(command());
    expect(published[0]?.recipientDevices.map((d) => d.userId).sort()).toEqual(["alice", "bob"]);
    await send(command());
    expect(blockedDrops).toEqual([{ kind: "group", recipients: 1 }]);
  });

  it("ignores stale membership events", async () => {
    view.applyMembership({
      conversationId: group,
      kind: "group",
      version: 2n,
      memberUserIds: ["bob"],
      deleted: false,
    });
    await send(command());
    expect(published[0]?.membershipVersion).toBe(3n);
  });

  it("refuses pairwise payloads that miss a device or address a stale one, listing them", async () => {
    const missing = await refusal(
      send(command({ conversationId: direct, envelope: pairwise({ bob: ["phone"] }) })),
    );
    expect([missing.code, missing.reason]).toEqual(["failed_precondition", "DEVICE_LIST_MISMATCH"]);
    expect(missing.metadata.missingDevices).toBe("alice/laptop");
    const stale = await refusal(
      send(
        command({
          conversationId: direct,
          clientMessageId: "c2",
          envelope: pairwise({ bob: ["phone", "old"], alice: ["laptop"] }),
        }),
      ),
    );
    expect(stale.metadata.staleDevices).toBe("bob/old");
    expect(published).toHaveLength(0);
  });

  it("lets a sender key distribution address a subset of devices", async () => {
    await send(command({ envelope: pairwise({ carol: ["tablet"] }, ContentKind.SENDER_KEY_DISTRIBUTION) }));
    expect(published[0]?.recipientDevices).toEqual([{ userId: "carol", deviceId: "tablet" }]);
  });

  it("refuses a pairwise payload for a non-member", async () => {
    const err = await refusal(
      send(
        command({
          conversationId: direct,
          envelope: pairwise({ bob: ["phone"], carol: ["tablet"], alice: ["laptop"] }),
        }),
      ),
    );
    expect(err.reason).toBe("RECIPIENT_NOT_MEMBER");
  });

  it("rate-limits each device and says when to retry", async () => {
    for (let i = 0; i < 5; i++) await send(command({ clientMessageId: `r${i}` }));
    const err = await refusal(send(command({ clientMessageId: "r5" })));
    expect([err.code, err.reason]).toEqual(["resource_exhausted", "RATE_LIMITED"]);
    expect(err.retryDelayMs).toBe(1000);
    await send(command({ sender: { userId: "alice", deviceId: "laptop" }, clientMessageId: "other-device" }));
  });
});

describe("a membership the view has not heard of yet", () => {
  const fresh = "00000000-0000-7000-8000-000000000099";
  const sendWith = (membership: MembershipSource, viewCatchUpMs = 1_000) =>
    createSendMessage({
      conversations: view,
      membership,
      viewCatchUpMs,
      devices: deviceDirectory,
      idempotency: createMemoryIdempotencyStore(),
      rateLimiter: createMemoryRateLimiter({ burst: 5, perSecond: 1 }, { now: () => 0 }),
      publisher: {
        async publish(message) {
          published.push(message);
        },
      },
      metrics: { blockedSenderDrops: () => {} },
      newMessageId: () => `m-${++ids}`,
    });
  const source = (versions: Record<string, bigint>): MembershipSource & { asked: string[] } => {
    const asked: string[] = [];
    return {
      asked,
      async membershipVersion(userId, conversationId) {
        asked.push(`${userId}@${conversationId}`);
        return versions[`${userId}@${conversationId}`];
      },
    };
  };

  it("waits for the view to get a group the connection service already has, then sends", async () => {
    const membership = source({ [`alice@${fresh}`]: 1n });
    const sending = sendWith(membership)(command({ conversationId: fresh }));
    // The MembershipChanged event arrives through the broker while the send waits.
    setTimeout(
      () =>
        view.applyMembership({
          conversationId: fresh,
          kind: "group",
          version: 1n,
          memberUserIds: ["alice", "carol"],
          deleted: false,
        }),
      20,
    );
    const outcome = await sending;
    expect(outcome.duplicate).toBe(false);
    expect(membership.asked).toEqual([`alice@${fresh}`]);
    expect(
      published
        .at(-1)
        ?.recipientDevices.map((d) => `${d.userId}/${d.deviceId}`)
        .sort(),
    ).toEqual(["alice/laptop", "carol/tablet"]);
  });

  it("answers UNAVAILABLE MEMBERSHIP_PROPAGATING when the view does not catch up in time", async () => {
    const err = await refusal(
      sendWith(source({ [`alice@${fresh}`]: 1n }), 30)(command({ conversationId: fresh })),
    );
    expect(err.code).toBe("unavailable");
    expect(err.reason).toBe("MEMBERSHIP_PROPAGATING");
    expect(err.message).toContain("retry with the same client_message_id");
    expect(published).toHaveLength(0);
  });

  it("refuses NOT_FOUND when the connection service says the sender is not a member, without waiting", async () => {
    const membership = source({});
    const err = await refusal(sendWith(membership, 60_000)(command({ conversationId: fresh })));
    expect(err.code).toBe("not_found");
    expect(err.reason).toBe("CONVERSATION_NOT_FOUND");
    expect(membership.asked).toHaveLength(1);
  });

  it("refuses NOT_FOUND when the view already holds the version the service answered (a removed member)", async () => {
    const err = await refusal(
      sendWith(
        source({ [`dave@${group}`]: 3n }),
        60_000,
      )(command({ sender: { userId: "dave", deviceId: "phone" }, conversationId: group })),
    );
    expect(err.code).toBe("not_found");
  });

  it("does not ask the connection service for a conversation the view knows the sender in", async () => {
    const membership = source({});
    await sendWith(membership)(command());
    expect(membership.asked).toEqual([]);
  });

  it("answers UNAVAILABLE MEMBERSHIP_UNAVAILABLE when the connection service cannot be asked", async () => {
    const err = await refusal(
      sendWith({
        async membershipVersion() {
          throw new Error("connect ECONNREFUSED 127.0.0.1:7101");
        },
      })(command({ conversationId: fresh })),
    );
    expect(err.code).toBe("unavailable");
    expect(err.reason).toBe("MEMBERSHIP_UNAVAILABLE");
  });
});
