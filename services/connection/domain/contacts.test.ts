import { timestampDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  ConnectionState,
  ConversationKind,
  MemberChangeKind,
  MemberRole,
} from "../../../gen/parley/events/v1/connection_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import { unavailable } from "../../../lib/errors.ts";
import { directConversationId } from "../../../lib/ids.ts";
import { DEFAULT_REQUEST_LIMIT } from "../service.ts";
import { connect, createTestDomain, createUsers, expectError, rejection, T0 } from "../test-support.ts";
import type { ConnectionStore } from "./connection-store.ts";
import { StoreConflictError } from "./connection-store.ts";
import type { DeviceDirectory } from "./device-directory.ts";
import { Reason } from "./errors.ts";

const AB = directConversationId("alice", "bob");

describe("users", () => {
  it("knows a user once they set a profile or first change something, never before", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice");
    await expectError(d.contacts.requestConnection("alice", "bob"), "not_found", Reason.userNotFound);
    // Bob acts (asks someone to connect) without ever setting a profile: from then on he exists.
    await d.contacts.requestConnection("bob", "alice");
    const profile = await d.contacts.getProfile("alice", "bob");
    expect(profile).toEqual({ userId: "bob", displayName: "", avatarUrl: "", updatedAt: undefined });
  });

  it("stores and returns the caller's profile, replacing both fields", async () => {
    const d = createTestDomain();
    await d.contacts.upsertProfile("alice", "Alice", "https://example.com/a.png");
    d.clock.advance(1000);
    const second = await d.contacts.upsertProfile("alice", "Alice A.", "");
    expect(second).toEqual({
      userId: "alice",
      displayName: "Alice A.",
      avatarUrl: "",
      updatedAt: new Date(T0.getTime() + 1000),
    });
    expect(await d.contacts.getProfile("alice", "alice")).toEqual(second);
  });

  it("shows the caller their own empty profile before they set one", async () => {
    const d = createTestDomain();
    expect(await d.contacts.getProfile("alice", "alice")).toMatchObject({ userId: "alice", displayName: "" });
  });
});

describe("connection requests", () => {
  it("makes a pending request on both sides and announces each side's view", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.takeEvents();
    const view = await d.contacts.requestConnection("alice", "bob");
    expect(view).toMatchObject({
      otherUserId: "bob",
      state: "pending_outgoing",
      profile: undefined,
      conversationId: undefined,
    });
    const incoming = await d.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" });
    expect(incoming.items.map((c) => [c.otherUserId, c.state, c.profile?.displayName])).toEqual([
      ["alice", "pending_incoming", "User alice"],
    ]);

    const events = await d.takeEvents();
    expect(events.map((e) => [e.topic, e.key])).toEqual([[Topics.contacts, "alice/bob"]]);
    const [contact] = events;
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.version).toBe(1n);
    expect(contact.event.changedAt && timestampDate(contact.event.changedAt)).toEqual(T0);
    expect(
      contact.event.views.map((v) => [v.userId, v.otherUserId, v.state, v.previousState, v.bySelf]),
    ).toEqual([
      ["alice", "bob", ConnectionState.PENDING_OUTGOING, ConnectionState.NONE, true],
      ["bob", "alice", ConnectionState.PENDING_INCOMING, ConnectionState.NONE, false],
    ]);
  });

  it("refuses asking oneself", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice");
    await expectError(
      d.contacts.requestConnection("alice", "alice"),
      "invalid_argument",
      Reason.selfConnection,
    );
  });

  it("returns a pending request unchanged when asked again, writing nothing", async () => {
    const d = createTestDomain({
      requestRate: { burst: 1, perSecond: 1 / 60 },
    });
    await createUsers(d, "alice", "bob");
    const first = await d.contacts.requestConnection("alice", "bob");
    await d.takeEvents();
    d.clock.advance(5000);
    const again = await d.contacts.requestConnection("alice", "bob");
    expect(again).toEqual(first);
    expect(await d.takeEvents()).toEqual([]);
  });

  it("connects at once when the other user had already asked", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.requestConnection("bob", "alice");
    await d.takeEvents();
    const view = await d.contacts.requestConnection("alice", "bob");
    expect(view).toMatchObject({
      state: "accepted",
      conversationId: AB,
      profile: { displayName: "User bob" },
    });
    const bobs = await d.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" });
    expect(bobs.items.map((c) => c.state)).toEqual(["accepted"]);
    const events = await d.takeEvents();
    expect(events.map((e) => e.topic)).toEqual([Topics.memberships, Topics.contacts]);
  });

  it("refuses asking a connected user again", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    await expectError(
      d.contacts.requestConnection("alice", "bob"),
      "already_exists",
      Reason.alreadyConnected,
    );
    await expectError(
      d.contacts.requestConnection("bob", "alice"),
      "already_exists",
      Reason.alreadyConnected,
    );
  });

  it("limits new requests per user with RESOURCE_EXHAUSTED and a retry delay", async () => {
    const d = createTestDomain({
      requestRate: { burst: 2, perSecond: 2 / 60 },
    });
    await createUsers(d, "alice", "bob", "carol", "dave");
    await d.contacts.requestConnection("alice", "bob");
    await d.contacts.requestConnection("alice", "carol");
    const err = await expectError(
      d.contacts.requestConnection("alice", "dave"),
      "resource_exhausted",
      Reason.rateLimited,
    );
    expect(err.retryDelayMs).toBeGreaterThan(0);
    // Accepting is not limited, nor are other users.
    await d.contacts.requestConnection("dave", "alice");
    await d.contacts.acceptConnection("alice", "dave");
  });

  it("gives requests back evenly (a token bucket, not a window): 100 an hour is one more every 36 s", async () => {
    const d = createTestDomain({ requestRate: DEFAULT_REQUEST_LIMIT });
    const others = Array.from({ length: 102 }, (_, i) => `user${i}`);
    await createUsers(d, "alice", ...others);
    for (const other of others.slice(0, 100)) await d.contacts.requestConnection("alice", other);
    const err = await expectError(
      d.contacts.requestConnection("alice", "user100"),
      "resource_exhausted",
      Reason.rateLimited,
    );
    expect(err.retryDelayMs).toBe(36_000);
    d.clock.advance(35_999);
    await expectError(
      d.contacts.requestConnection("alice", "user100"),
      "resource_exhausted",
      Reason.rateLimited,
    );
    d.clock.advance(1);
    await d.contacts.requestConnection("alice", "user100");
    await expectError(
      d.contacts.requestConnection("alice", "user101"),
      "resource_exhausted",
      Reason.rateLimited,
    );
  });
});

describe("accepting and rejecting", () => {
  it("accepts a pending request: both ACCEPTED, the direct conversation exists and is announced", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "bob");
    await d.takeEvents();
    d.clock.advance(1000);
    const view = await d.contacts.acceptConnection("bob", "alice");
    expect(view).toMatchObject({
      otherUserId: "alice",
      state: "accepted",
      conversationId: AB,
      createdAt: T0,
      updatedAt: new Date(T0.getTime() + 1000),
    });
    const conversation = await d.conversations.getConversation("alice", AB);
    expect(conversation).toMatchObject({
      role: "member",
      direct: { otherUserId: "bob", otherProfile: { displayName: "User bob" } },
      conversation: { kind: "direct", memberCount: 2, membershipVersion: 1 },
    });

    const events = await d.takeEvents();
    const membership = events.find((e) => e.topic === Topics.memberships);
    if (membership?.topic !== Topics.memberships) throw new Error("expected MembershipChanged");
    expect(membership.key).toBe(AB);
    expect(membership.event).toMatchObject({
      conversationId: AB,
      kind: ConversationKind.DIRECT,
      version: 1n,
      deleted: false,
      changedByUserId: "bob",
    });
    expect(membership.event.members.map((m) => [m.userId, m.role])).toEqual([
      ["alice", MemberRole.MEMBER],
      ["bob", MemberRole.MEMBER],
    ]);
    expect(membership.event.changes.map((c) => [c.userId, c.kind])).toEqual([
      ["alice", MemberChangeKind.ADDED],
      ["bob", MemberChangeKind.ADDED],
    ]);
    const contact = events.find((e) => e.topic === Topics.contacts);
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.version).toBe(2n);
    expect(
      contact.event.views.map((v) => [v.userId, v.state, v.previousState, v.bySelf, v.conversationId]),
    ).toEqual([
      ["bob", ConnectionState.ACCEPTED, ConnectionState.PENDING_INCOMING, true, AB],
      ["alice", ConnectionState.ACCEPTED, ConnectionState.PENDING_OUTGOING, false, AB],
    ]);
  });

  it("accepting again returns the connection; accepting without a request is NOT_FOUND", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol");
    await connect(d, "alice", "bob");
    await d.takeEvents();
    expect(await d.contacts.acceptConnection("alice", "bob")).toMatchObject({ state: "accepted" });
    expect(await d.takeEvents()).toEqual([]);
    await expectError(d.contacts.acceptConnection("alice", "carol"), "not_found", Reason.requestNotFound);
    // The requester cannot accept their own request.
    await d.contacts.requestConnection("alice", "carol");
    await expectError(d.contacts.acceptConnection("alice", "carol"), "not_found", Reason.requestNotFound);
  });

  it("rejects a request on both sides; the requester may ask again", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "bob");
    await d.takeEvents();
    await d.contacts.rejectConnection("bob", "alice");
    for (const user of ["alice", "bob"]) {
      expect(
        (await d.contacts.listConnections(user, { states: [], pageSize: 0, pageToken: "" })).items,
      ).toEqual([]);
    }
    const [contact] = await d.takeEvents();
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.views.map((v) => [v.userId, v.state, v.bySelf])).toEqual([
      ["bob", ConnectionState.NONE, true],
      ["alice", ConnectionState.NONE, false],
    ]);
    await expectError(d.contacts.rejectConnection("bob", "alice"), "not_found", Reason.requestNotFound);
    expect(await d.contacts.requestConnection("alice", "bob")).toMatchObject({ state: "pending_outgoing" });
  });
});

describe("blocks", () => {
  it("blocking a contact: BLOCKED for the blocker, gone for the blocked, direct conversation ended", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    await d.takeEvents();
    const view = await d.contacts.blockUser("alice", "bob");
    expect(view).toMatchObject({ otherUserId: "bob", state: "blocked", profile: undefined, devices: [] });
    expect(
      (await d.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" })).items,
    ).toEqual([]);
    await expectError(d.conversations.getConversation("alice", AB), "not_found", Reason.conversationNotFound);
    await expectError(d.conversations.getConversation("bob", AB), "not_found", Reason.conversationNotFound);

    const events = await d.takeEvents();
    expect(events.map((e) => [e.topic, e.key])).toEqual([
      [Topics.blocks, "alice/bob"],
      [Topics.memberships, AB],
      [Topics.contacts, "alice/bob"],
    ]);
    const [block, membership, contact] = events;
    if (block?.topic !== Topics.blocks) throw new Error("expected BlockChanged");
    expect(block.event).toMatchObject({
      blockerUserId: "alice",
      blockedUserId: "bob",
      blocked: true,
      version: 3n,
    });
    if (membership?.topic !== Topics.memberships) throw new Error("expected MembershipChanged");
    expect(membership.event).toMatchObject({ version: 2n, deleted: true, members: [] });
    expect(membership.event.changes.map((c) => [c.userId, c.kind])).toEqual([
      ["alice", MemberChangeKind.REMOVED],
      ["bob", MemberChangeKind.REMOVED],
    ]);
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.views.map((v) => [v.userId, v.state, v.previousState, v.bySelf])).toEqual([
      ["alice", ConnectionState.BLOCKED, ConnectionState.ACCEPTED, true],
      ["bob", ConnectionState.NONE, ConnectionState.ACCEPTED, false],
    ]);
  });

  it("blocking a stranger tells the stranger nothing", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.takeEvents();
    await d.contacts.blockUser("alice", "bob");
    const events = await d.takeEvents();
    const contact = events.find((e) => e.topic === Topics.contacts);
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.views.map((v) => v.userId)).toEqual(["alice"]);
    expect(events.some((e) => e.topic === Topics.memberships)).toBe(false);
  });

  it("a user who blocked the caller looks exactly like a user who does not exist", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    await d.contacts.blockUser("alice", "bob");
    const blocked = await rejection(d.contacts.requestConnection("bob", "alice"));
    const unknown = await rejection(d.contacts.requestConnection("bob", "nobody"));
    expect({ ...blocked, cause: undefined }).toEqual({ ...unknown, cause: undefined });
    expect([blocked.code, blocked.reason, blocked.message]).toEqual([
      unknown.code,
      unknown.reason,
      unknown.message,
    ]);
    const profileBlocked = await rejection(d.contacts.getProfile("bob", "alice"));
    const profileUnknown = await rejection(d.contacts.getProfile("bob", "nobody"));
    expect([profileBlocked.code, profileBlocked.reason, profileBlocked.message]).toEqual([
      profileUnknown.code,
      profileUnknown.reason,
      profileUnknown.message,
    ]);
    expect(profileBlocked.reason).toBe(Reason.userNotFound);
    // The blocker is told to unblock first (NOT_FOUND would be a lie about their own block).
    await expectError(
      d.contacts.requestConnection("alice", "bob"),
      "failed_precondition",
      Reason.userBlocked,
    );
    await expectError(d.contacts.deleteConnection("alice", "bob"), "failed_precondition", Reason.userBlocked);
  });

  it("a mutual block stays hidden: each blocker still gets USER_BLOCKED, not NOT_FOUND", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.blockUser("alice", "bob");
    await d.contacts.blockUser("bob", "alice");
    await expectError(
      d.contacts.requestConnection("bob", "alice"),
      "failed_precondition",
      Reason.userBlocked,
    );
    await d.contacts.unblockUser("alice", "bob");
    // Bob still blocks Alice: Alice's request finds nobody.
    await expectError(d.contacts.requestConnection("alice", "bob"), "not_found", Reason.userNotFound);
  });

  it("blocking is idempotent; blocking oneself or an unknown user is refused", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.blockUser("alice", "bob");
    await d.takeEvents();
    expect(await d.contacts.blockUser("alice", "bob")).toMatchObject({ state: "blocked" });
    expect(await d.takeEvents()).toEqual([]);
    await expectError(d.contacts.blockUser("alice", "alice"), "invalid_argument", Reason.selfBlock);
    await expectError(d.contacts.blockUser("alice", "nobody"), "not_found", Reason.userNotFound);
  });

  it("unblocking leaves the users unconnected and announces the unblock", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    await d.contacts.blockUser("alice", "bob");
    await d.takeEvents();
    await d.contacts.unblockUser("alice", "bob");
    for (const user of ["alice", "bob"]) {
      expect(
        (await d.contacts.listConnections(user, { states: [], pageSize: 0, pageToken: "" })).items,
      ).toEqual([]);
    }
    const events = await d.takeEvents();
    expect(events.map((e) => e.topic)).toEqual([Topics.blocks, Topics.contacts]);
    const [block, contact] = events;
    if (block?.topic !== Topics.blocks) throw new Error("expected BlockChanged");
    expect(block.event).toMatchObject({ blocked: false, version: 4n });
    if (contact?.topic !== Topics.contacts) throw new Error("expected ContactChanged");
    expect(contact.event.views.map((v) => [v.userId, v.state, v.previousState])).toEqual([
      ["alice", ConnectionState.NONE, ConnectionState.BLOCKED],
    ]);
    await expectError(d.contacts.unblockUser("alice", "bob"), "not_found", Reason.blockNotFound);
    // They may connect again, into the same direct conversation with a higher membership version.
    await connect(d, "alice", "bob");
    expect((await d.conversations.getConversation("bob", AB)).conversation.membershipVersion).toBe(3);
  });

  it("CheckBlocks tells who the user blocked and who blocked the user", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol", "dave");
    await d.contacts.blockUser("alice", "bob");
    await d.contacts.blockUser("carol", "alice");
    await connect(d, "alice", "dave");
    expect(await d.contacts.checkBlocks("alice", ["dave", "carol", "bob", "nobody"])).toEqual({
      blocked: ["bob"],
      blockedBy: ["carol"],
    });
  });
});

describe("deleting connections", () => {
  it("disconnects an accepted pair on both sides and ends their direct conversation", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    await d.takeEvents();
    await d.contacts.deleteConnection("bob", "alice");
    await expectError(d.conversations.getConversation("alice", AB), "not_found", Reason.conversationNotFound);
    const events = await d.takeEvents();
    expect(events.map((e) => e.topic)).toEqual([Topics.memberships, Topics.contacts]);
    await expectError(d.contacts.deleteConnection("bob", "alice"), "not_found", Reason.connectionNotFound);
  });

  it("cancels an outgoing request", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "bob");
    await d.contacts.deleteConnection("alice", "bob");
    expect(
      (await d.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" })).items,
    ).toEqual([]);
  });
});

describe("profiles", () => {
  it("shows a profile to connections, to those asked, to co-members; hides it from everyone else", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol", "dave", "erin");
    await d.contacts.requestConnection("alice", "bob");
    // Bob was asked by Alice: he sees her profile; she does not see his until he accepts.
    expect(await d.contacts.getProfile("bob", "alice")).toMatchObject({ displayName: "User alice" });
    await expectError(d.contacts.getProfile("alice", "bob"), "not_found", Reason.userNotFound);
    await d.contacts.acceptConnection("bob", "alice");
    expect(await d.contacts.getProfile("alice", "bob")).toMatchObject({ displayName: "User bob" });
    // Carol and Dave are both connected to Alice only, and meet in her group.
    await connect(d, "alice", "carol", "dave");
    await expectError(d.contacts.getProfile("carol", "dave"), "not_found", Reason.userNotFound);
    await d.conversations.createGroup("alice", "friends", ["carol", "dave"], "");
    expect(await d.contacts.getProfile("carol", "dave")).toMatchObject({ displayName: "User dave" });
    await expectError(d.contacts.getProfile("erin", "alice"), "not_found", Reason.userNotFound);
  });
});

describe("listing connections", () => {
  it("pages through connections by other user id with opaque tokens, in the requested states", async () => {
    const d = createTestDomain();
    const others = Array.from({ length: 25 }, (_, i) => `user${String(i).padStart(2, "0")}`);
    await createUsers(d, "alice", ...others);
    await connect(d, "alice", ...others.slice(0, 20));
    for (const other of others.slice(20)) await d.contacts.requestConnection("alice", other);

    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await d.contacts.listConnections("alice", { states: [], pageSize: 10, pageToken: token });
      seen.push(...page.items.map((c) => c.otherUserId));
      token = page.nextPageToken;
      pages++;
    } while (token !== "");
    expect(pages).toBe(3);
    expect(seen).toEqual(others);

    const accepted = await d.contacts.listConnections("alice", {
      states: ["accepted"],
      pageSize: 15,
      pageToken: "",
    });
    expect(accepted.items.length).toBe(15);
    const rest = await d.contacts.listConnections("alice", {
      states: ["accepted"],
      pageSize: 15,
      pageToken: accepted.nextPageToken,
    });
    expect(rest.items.map((c) => c.otherUserId)).toEqual(others.slice(15, 20));
    expect(rest.nextPageToken).toBe("");
    expect(rest.items.every((c) => c.state === "accepted" && c.conversationId !== undefined)).toBe(true);
    const outgoing = await d.contacts.listConnections("alice", {
      states: ["pending_outgoing"],
      pageSize: 0,
      pageToken: "",
    });
    expect(outgoing.items.map((c) => [c.otherUserId, c.profile])).toEqual(
      others.slice(20).map((o) => [o, undefined]),
    );
  });

  it("refuses malformed, foreign, mismatched and expired page tokens with INVALID_PAGE_TOKEN", async () => {
    const d = createTestDomain();
    const others = ["b1", "b2", "b3"];
    await createUsers(d, "alice", "carol", ...others);
    await connect(d, "alice", ...others);
    const first = await d.contacts.listConnections("alice", { states: [], pageSize: 1, pageToken: "" });
    const token = first.nextPageToken;
    expect(token).not.toBe("");
    const list = (user: string, pageToken: string, states: ("accepted" | "blocked")[] = []) =>
      d.contacts.listConnections(user, { states, pageSize: 1, pageToken });
    for (const bad of ["not a token", "e30", `${token}x`, Buffer.from('{"v":1}').toString("base64url")]) {
      await expectError(list("alice", bad), "invalid_argument", Reason.invalidPageToken);
    }
    await expectError(list("carol", token), "invalid_argument", Reason.invalidPageToken);
    await expectError(list("alice", token, ["blocked"]), "invalid_argument", Reason.invalidPageToken);
    await expectError(
      d.conversations.listConversations("alice", { kind: undefined, pageSize: 1, pageToken: token }),
      "invalid_argument",
      Reason.invalidPageToken,
    );
    expect((await list("alice", token)).items.map((c) => c.otherUserId)).toEqual(["b2"]);
    d.clock.advance(25 * 60 * 60 * 1000);
    await expectError(list("alice", token), "invalid_argument", Reason.invalidPageToken);
  });

  it("shows the devices of ACCEPTED connections only", async () => {
    const asked: string[][] = [];
    const devices: DeviceDirectory = {
      async identityKeys(caller, userIds) {
        asked.push([caller, ...userIds]);
        return new Map(
          userIds.map((id) => [
            id,
            [
              {
                deviceId: `${id}-phone`,
                identityKey: new Uint8Array(33).fill(5),
                identityKeyCreatedAt: T0,
                previousIdentityKey: new Uint8Array(),
                previousIdentityKeyValidUntil: undefined,
              },
            ],
          ]),
        );
      },
    };
    const d = createTestDomain({ devices });
    await createUsers(d, "alice", "bob", "carol");
    await connect(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "carol");
    asked.length = 0;
    const page = await d.contacts.listConnections("alice", { states: [], pageSize: 0, pageToken: "" });
    expect(page.items.map((c) => [c.otherUserId, c.devices.map((x) => x.deviceId)])).toEqual([
      ["bob", ["bob-phone"]],
      ["carol", []],
    ]);
    expect(asked).toEqual([["alice", "bob"]]);
  });
});

describe("devices unavailable", () => {
  it("a committed accept still answers (without devices); a listing fails with the directory's error", async () => {
    const reported: string[] = [];
    const down: DeviceDirectory = {
      async identityKeys() {
        throw unavailable("KEY_SERVICE_UNAVAILABLE", "down");
      },
    };
    const d = createTestDomain({ devices: down, reportError: (_err, message) => reported.push(message) });
    await createUsers(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "bob");
    const accepted = await d.contacts.acceptConnection("bob", "alice");
    expect([accepted.state, accepted.devices]).toEqual(["accepted", []]);
    expect(reported.length).toBe(1);
    await expectError(
      d.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" }),
      "unavailable",
      "KEY_SERVICE_UNAVAILABLE",
    );
    // Pending connections need no devices: listing them works.
    expect(
      (await d.contacts.listConnections("bob", { states: ["pending_incoming"], pageSize: 0, pageToken: "" }))
        .items,
    ).toEqual([]);
  });
});

describe("concurrency", () => {
  it("starts over when a commit loses a race, and gives up with ABORTED after repeated losses", async () => {
    let failures = 1;
    const inner = createTestDomain().store;
    const flaky: ConnectionStore = Object.create(inner, {
      commitPair: {
        value: async (commit: Parameters<ConnectionStore["commitPair"]>[0]) => {
          if (failures-- > 0) throw new StoreConflictError("lost a race");
          return inner.commitPair(commit);
        },
      },
    });
    const d = createTestDomain({ store: flaky });
    await createUsers(d, "alice", "bob", "carol");
    expect(await d.contacts.requestConnection("alice", "bob")).toMatchObject({ state: "pending_outgoing" });
    failures = 100;
    await expectError(
      d.contacts.requestConnection("alice", "carol"),
      "aborted",
      Reason.concurrentModification,
    );
    expect(
      (await d.contacts.listConnections("carol", { states: [], pageSize: 0, pageToken: "" })).items,
    ).toEqual([]);
  });

  it("applies concurrent requests between the same pair once", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await Promise.all([
      d.contacts.requestConnection("alice", "bob"),
      d.contacts.requestConnection("bob", "alice"),
    ]);
    const views = await d.contacts.listConnections("alice", { states: [], pageSize: 0, pageToken: "" });
    expect(views.items.map((c) => c.state)).toEqual(["accepted"]);
    const versions = (await d.takeEvents())
      .filter((e) => e.topic === Topics.contacts)
      .map((e) => (e.topic === Topics.contacts ? e.event.version : 0n));
    expect(versions).toEqual([1n, 2n]);
  });
});
