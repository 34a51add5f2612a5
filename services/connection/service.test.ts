// The connection service over gRPC: a real server on port 0 (lib's createGrpcServer, with its
// validation and error mapping) called through lib's createGrpcClient, on the SQLite store and
// the embedded broker. Codes and ErrorInfo reasons are read back with fromGrpcError.
import { fromBinary } from "@bufbuild/protobuf";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { ConnectionState, MemberRole } from "../../gen/parley/connection/v1/connection_pb.ts";
import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import {
  ContactChangedSchema,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import type { BrokerMessage } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import type { ParleyError } from "../../lib/errors.ts";
import type { GrpcServiceClient } from "../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import { fromGrpcError } from "../../lib/grpc/grpc-error.ts";
import { createGrpcServer } from "../../lib/grpc/server.ts";
import { directConversationId } from "../../lib/ids.ts";
import { createLogger } from "../../lib/logging.ts";
import type { RateLimiter } from "../../lib/rate-limit.ts";
import type { StopTelemetry } from "../../lib/telemetry.ts";
import { startTelemetry } from "../../lib/telemetry.ts";
import { Reason } from "./domain/errors.ts";
import { createConnectionService } from "./service.ts";

let stopTelemetry: StopTelemetry;
beforeAll(() => {
  stopTelemetry = startTelemetry({ serviceName: "connection-test" });
});
afterAll(async () => {
  await stopTelemetry();
});

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function start(options: { readonly requestLimiter?: RateLimiter } = {}) {
  const logger = createLogger("connection-test", "silent");
  const broker = await createEmbeddedBroker({ path: ":memory:", logger });
  cleanup.push(() => broker.close());
  const connection = createConnectionService({ store: { path: ":memory:" }, broker, logger, ...options });
  cleanup.push(() => connection.stop());
  const server = createGrpcServer({ name: "connection", logger, services: connection.registrations });
  const port = await server.listen("127.0.0.1", 0);
  cleanup.push(() => server.shutdown(100));
  const client = createGrpcClient(ConnectionService, `127.0.0.1:${port}`);
  cleanup.push(() => closeChannel(client));
  return { client, broker };
}

async function failure(call: Promise<unknown>): Promise<ParleyError> {
  try {
    await call;
  } catch (err) {
    return fromGrpcError(err);
  }
  throw new Error("expected the call to fail");
}

async function expectFailure(
  call: Promise<unknown>,
  code: ParleyError["code"],
  reason: string,
): Promise<ParleyError> {
  const err = await failure(call);
  expect({ code: err.code, reason: err.reason }).toEqual({ code, reason });
  return err;
}

async function users(client: GrpcServiceClient<typeof ConnectionService>, ...ids: string[]) {
  for (const id of ids) await client.upsertProfile({ userId: id, displayName: `User ${id}` });
}

async function connect(client: GrpcServiceClient<typeof ConnectionService>, a: string, ...others: string[]) {
  for (const other of others) {
    await client.requestConnection({ userId: other, otherUserId: a });
    await client.acceptConnection({ userId: a, otherUserId: other });
  }
}

/** Resolves with the first message on `topic` that `accept` takes (bounded by the test timeout). */
async function nextMessage(
  broker: Awaited<ReturnType<typeof createEmbeddedBroker>>,
  topic: string,
  accept: (message: BrokerMessage) => boolean,
): Promise<BrokerMessage> {
  let resolve: (message: BrokerMessage) => void = () => {};
  const found = new Promise<BrokerMessage>((r) => {
    resolve = r;
  });
  const subscription = await broker.follow(topic, {}, (message) => {
    if (accept(message)) resolve(message);
  });
  cleanup.push(() => subscription.close());
  return found;
}

describe("ConnectionService over gRPC", () => {
  it("implements every RPC of the contract", async () => {
    const { client } = await start();
    for (const method of ConnectionService.methods) {
      expect(typeof (client as unknown as Record<string, unknown>)[method.localName]).toBe("function");
    }
    // No handler answers UNIMPLEMENTED: each call below reaches the domain.
    const err = await failure(
      client.getConversation({ userId: "a", conversationId: directConversationId("a", "b") }),
    );
    expect(err.code).toBe("not_found");
  });

  it("connects two users, answers with the direct conversation and publishes the events", async () => {
    const { client, broker } = await start();
    await users(client, "alice", "bob");
    const contact = nextMessage(broker, Topics.contacts, (m) => {
      const event = fromBinary(ContactChangedSchema, m.payload);
      return event.views.some((v) => v.state === 3);
    });
    const membership = nextMessage(broker, Topics.memberships, () => true);

    const requested = await client.requestConnection({ userId: "alice", otherUserId: "bob" });
    expect(requested.connection?.state).toBe(ConnectionState.PENDING_OUTGOING);
    const accepted = await client.acceptConnection({ userId: "bob", otherUserId: "alice" });
    expect(accepted.connection).toMatchObject({
      otherUserId: "alice",
      state: ConnectionState.ACCEPTED,
      conversationId: directConversationId("alice", "bob"),
      profile: { userId: "alice", displayName: "User alice" },
    });

    const contactMessage = await contact;
    expect(contactMessage.key).toBe("alice/bob");
    expect(contactMessage.properties.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/);
    // The payload names the call that made the change; the properties the outbox relay's producer
    // span, which continues that call's trace.
    const traceId = (traceparent: string | undefined) => traceparent?.split("-")[1];
    expect(traceId(fromBinary(ContactChangedSchema, contactMessage.payload).traceparent)).toBe(
      traceId(contactMessage.properties.traceparent),
    );
    const membershipMessage = await membership;
    expect(membershipMessage.key).toBe(directConversationId("alice", "bob"));
    expect(
      fromBinary(MembershipChangedSchema, membershipMessage.payload).members.map((m) => m.userId),
    ).toEqual(["alice", "bob"]);

    const conversation = await client.getConversation({
      userId: "alice",
      conversationId: directConversationId("alice", "bob"),
    });
    expect(conversation.conversation?.kind).toMatchObject({ case: "direct", value: { otherUserId: "bob" } });
    const list = await client.listConnections({ userId: "alice" });
    expect(list.connections.map((c) => [c.otherUserId, c.state])).toEqual([
      ["bob", ConnectionState.ACCEPTED],
    ]);
  });

  it("sends the documented codes and reasons", async () => {
    const { client } = await start();
    await users(client, "alice", "bob", "carol");
    await connect(client, "alice", "bob");
    await expectFailure(
      client.requestConnection({ userId: "alice", otherUserId: "nobody" }),
      "not_found",
      Reason.userNotFound,
    );
    await expectFailure(
      client.requestConnection({ userId: "alice", otherUserId: "alice" }),
      "invalid_argument",
      Reason.selfConnection,
    );
    await expectFailure(
      client.requestConnection({ userId: "alice", otherUserId: "bob" }),
      "already_exists",
      Reason.alreadyConnected,
    );
    await client.blockUser({ userId: "carol", otherUserId: "alice" });
    const blockedBy = await expectFailure(
      client.requestConnection({ userId: "alice", otherUserId: "carol" }),
      "not_found",
      Reason.userNotFound,
    );
    const unknown = await failure(client.requestConnection({ userId: "alice", otherUserId: "nobody" }));
    expect(blockedBy.message).toBe(unknown.message);
    await expectFailure(
      client.requestConnection({ userId: "carol", otherUserId: "alice" }),
      "failed_precondition",
      Reason.userBlocked,
    );
    await expectFailure(
      client.acceptConnection({ userId: "alice", otherUserId: "carol" }),
      "not_found",
      Reason.requestNotFound,
    );
    await expectFailure(
      client.unblockUser({ userId: "alice", otherUserId: "carol" }),
      "not_found",
      Reason.blockNotFound,
    );
    const blocks = await client.checkBlocks({ userId: "alice", otherUserIds: ["bob", "carol"] });
    expect([blocks.blockedUserIds, blocks.blockedByUserIds]).toEqual([[], ["carol"]]);

    const notConnected = await expectFailure(
      client.createGroup({ userId: "alice", name: "g", memberUserIds: ["bob", "carol"] }),
      "not_found",
      Reason.notAConnection,
    );
    expect(notConnected.metadata.userIds).toBe("carol");

    const created = await client.createGroup({ userId: "alice", name: "g", memberUserIds: ["bob"] });
    const id = created.conversation?.conversationId ?? "";
    expect(created.conversation).toMatchObject({
      role: MemberRole.OWNER,
      memberCount: 2,
      membershipVersion: 1n,
    });
    await expectFailure(
      client.renameGroup({ userId: "bob", conversationId: id, name: "mine" }),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectFailure(
      client.leaveGroup({ userId: "alice", conversationId: id }),
      "failed_precondition",
      Reason.ownerMustTransfer,
    );
    await expectFailure(
      client.getConversation({ userId: "carol", conversationId: id }),
      "not_found",
      Reason.conversationNotFound,
    );
    await expectFailure(
      client.renameGroup({
        userId: "alice",
        conversationId: directConversationId("alice", "bob"),
        name: "x",
      }),
      "failed_precondition",
      Reason.notAGroup,
    );
    await expectFailure(
      client.setMemberRole({
        userId: "alice",
        conversationId: id,
        memberUserId: "carol",
        role: MemberRole.ADMIN,
      }),
      "not_found",
      Reason.memberNotFound,
    );
    await expectFailure(
      client.listConversationMembers({ userId: "alice", conversationId: id, pageToken: "bogus" }),
      "invalid_argument",
      Reason.invalidPageToken,
    );
  });

  it("lets protovalidate refuse what the schema forbids before the handlers run", async () => {
    const { client } = await start();
    await users(client, "alice", "bob");
    await connect(client, "alice", "bob");
    const err = await failure(
      client.createGroup({ userId: "alice", name: "g", memberUserIds: ["bob", "alice"] }),
    );
    expect(err.code).toBe("invalid_argument");
    const badName = await failure(client.upsertProfile({ userId: "alice", displayName: "two\nlines" }));
    expect(badName.code).toBe("invalid_argument");
    const badSize = await failure(client.listConnections({ userId: "alice", pageSize: 1001 }));
    expect(badSize.code).toBe("invalid_argument");
  });

  it("pages members and groups end to end, and transfers ownership", async () => {
    const { client } = await start();
    const others = Array.from({ length: 12 }, (_, i) => `m${String(i).padStart(2, "0")}`);
    await users(client, "owner", ...others);
    await connect(client, "owner", ...others);
    const created = await client.createGroup({
      userId: "owner",
      name: "g",
      memberUserIds: others,
      requestId: "0190f5c1-0000-7000-8000-000000000001",
    });
    const id = created.conversation?.conversationId ?? "";
    const retried = await client.createGroup({
      userId: "owner",
      name: "g",
      memberUserIds: others,
      requestId: "0190f5c1-0000-7000-8000-000000000001",
    });
    expect(retried.conversation?.conversationId).toBe(id);

    const transfer = await client.setMemberRole({
      userId: "owner",
      conversationId: id,
      memberUserId: "m05",
      role: MemberRole.OWNER,
    });
    expect(transfer.conversation).toMatchObject({
      role: MemberRole.ADMIN,
      kind: { case: "group", value: { ownerUserId: "m05" } },
    });
    expect(transfer.member).toMatchObject({
      userId: "m05",
      role: MemberRole.OWNER,
      profile: { displayName: "User m05" },
    });

    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await client.listConversationMembers({
        userId: "m01",
        conversationId: id,
        pageSize: 5,
        pageToken,
      });
      expect(page.membershipVersion).toBe(2n);
      seen.push(...page.members.map((m) => m.userId));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(seen).toEqual(["m05", "owner", ...others.filter((o) => o !== "m05")]);

    const removed = await client.removeGroupMembers({
      userId: "m05",
      conversationId: id,
      memberUserIds: ["owner", "zed"],
    });
    expect([removed.removedUserIds, removed.notMemberUserIds]).toEqual([["owner"], ["zed"]]);
    const left = await client.leaveGroup({ userId: "m00", conversationId: id });
    expect(left.leftAt).toBeDefined();
    const groups = await client.listConversations({ userId: "m01", kind: 2 });
    expect(groups.conversations.map((c) => c.memberCount)).toEqual([11]);
  });
});

describe("ConnectionService's request limiter", () => {
  it("is the one it is given when there is one, and closing it is left to the caller", async () => {
    const takes: string[] = [];
    const refusing = {
      async take(key: string, cost = 1) {
        takes.push(`${key} x${cost}`);
        return { allowed: false, retryAfterMs: 9_000 } as const;
      },
      close: vi.fn(),
    };
    const { client } = await start({ requestLimiter: refusing });
    await users(client, "alice", "bob");
    const refusal = await expectFailure(
      client.requestConnection({ userId: "alice", otherUserId: "bob" }),
      "resource_exhausted",
      Reason.rateLimited,
    );
    expect(refusal.retryDelayMs).toBe(9_000);
    expect(takes).toEqual(["alice x1"]);
    for (const step of cleanup.splice(0).reverse()) await step();
    expect(refusing.close).not.toHaveBeenCalled();
  });
});
