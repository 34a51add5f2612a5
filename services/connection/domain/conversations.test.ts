import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  ConversationKind,
  MemberChangeKind,
  MemberRole,
} from "../../../gen/parley/events/v1/connection_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import { directConversationId } from "../../../lib/ids.ts";
import { createSqliteConnectionStore } from "../adapters/sqlite/sqlite-connection-store.ts";
import type { DecodedEvent, TestDomain } from "../test-support.ts";
import { connect, createTestDomain, createUsers, expectError, T0 } from "../test-support.ts";
import { Reason } from "./errors.ts";
import type { MemberRole as Role } from "./model.ts";

const REQUEST_ID = "0190f5c1-0000-7000-8000-000000000001";

function membershipEvents(events: readonly DecodedEvent[]) {
  return events.flatMap((e) => (e.topic === Topics.memberships ? [e] : []));
}

/** Alice owns a group with bob (admin), carol and dave (members); erin is Alice's connection outside it. */
async function groupWithRoles(): Promise<{ d: TestDomain; id: string }> {
  const d = createTestDomain();
  await createUsers(d, "alice", "bob", "carol", "dave", "erin");
  await connect(d, "alice", "bob", "carol", "dave", "erin");
  await connect(d, "bob", "erin");
  const group = await d.conversations.createGroup("alice", "team", ["bob", "carol", "dave"], "");
  const id = group.conversation.conversationId;
  await d.conversations.setMemberRole("alice", id, "bob", "admin");
  await d.takeEvents();
  return { d, id };
}

async function roles(d: TestDomain, caller: string, id: string): Promise<[string, Role][]> {
  const page = await d.conversations.listMembers(caller, id, { pageSize: 0, pageToken: "" });
  return page.items.map((m) => [m.member.userId, m.member.role]);
}

describe("creating groups", () => {
  it("creates a group owned by the caller with connections as members, and announces it", async () => {
    const d = createTestDomain({ newGroupId: () => "0190f5c1-0000-7000-8000-00000000aaaa" });
    await createUsers(d, "alice", "bob", "carol");
    await connect(d, "alice", "bob", "carol");
    await d.takeEvents();
    const view = await d.conversations.createGroup("alice", "Friends", ["carol", "bob"], "");
    expect(view).toMatchObject({
      role: "owner",
      direct: undefined,
      conversation: {
        conversationId: "0190f5c1-0000-7000-8000-00000000aaaa",
        kind: "group",
        name: "Friends",
        ownerUserId: "alice",
        memberCount: 3,
        membershipVersion: 1,
        createdAt: T0,
      },
    });
    const [created] = membershipEvents(await d.takeEvents());
    expect(created?.key).toBe("0190f5c1-0000-7000-8000-00000000aaaa");
    expect(created?.event).toMatchObject({
      kind: ConversationKind.GROUP,
      version: 1n,
      deleted: false,
      changedByUserId: "alice",
    });
    expect(created?.event.members.map((m) => [m.userId, m.role])).toEqual([
      ["alice", MemberRole.OWNER],
      ["bob", MemberRole.MEMBER],
      ["carol", MemberRole.MEMBER],
    ]);
    expect(created?.event.changes.every((c) => c.kind === MemberChangeKind.ADDED)).toBe(true);
  });

  it("refuses members who are not accepted connections (unknown, pending, blocking) with their ids", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol", "dave");
    await connect(d, "alice", "bob");
    await d.contacts.requestConnection("alice", "carol");
    await connect(d, "alice", "dave");
    await d.contacts.blockUser("dave", "alice");
    await d.takeEvents();
    const err = await expectError(
      d.conversations.createGroup("alice", "g", ["bob", "nobody", "carol", "dave"], ""),
      "not_found",
      Reason.notAConnection,
    );
    expect(err.metadata).toEqual({ userIds: "carol,dave,nobody", userCount: "3" });
    expect(await d.takeEvents()).toEqual([]);
  });

  it("returns the first group on a retry with the same request id; ALREADY_EXISTS for another request", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol");
    await connect(d, "alice", "bob", "carol");
    const first = await d.conversations.createGroup("alice", "g", ["bob", "carol"], REQUEST_ID);
    await d.takeEvents();
    const retry = await d.conversations.createGroup("alice", "g", ["carol", "bob"], REQUEST_ID);
    expect(retry.conversation.conversationId).toBe(first.conversation.conversationId);
    expect(await d.takeEvents()).toEqual([]);
    await expectError(
      d.conversations.createGroup("alice", "other", ["bob"], REQUEST_ID),
      "already_exists",
      Reason.requestIdReused,
    );
    // Another user may use the same request id for their own group.
    await connect(d, "bob", "carol");
    const bobs = await d.conversations.createGroup("bob", "g", ["carol"], REQUEST_ID);
    expect(bobs.conversation.conversationId).not.toBe(first.conversation.conversationId);
  });
});

describe("group size", () => {
  it("holds the creator and 999 others, and refuses the 1,001st member with GROUP_FULL", async () => {
    const d = createTestDomain();
    const others = Array.from({ length: 1000 }, (_, i) => `u${String(i).padStart(4, "0")}`);
    await createUsers(d, "owner", ...others);
    await connect(d, "owner", ...others);
    const group = await d.conversations.createGroup("owner", "big", others.slice(0, 999), "");
    const id = group.conversation.conversationId;
    expect(group.conversation.memberCount).toBe(1000);
    await d.takeEvents();

    const err = await expectError(
      d.conversations.addMembers("owner", id, [others[999] as string]),
      "failed_precondition",
      Reason.groupFull,
    );
    expect(err.metadata).toMatchObject({ maxMembers: "1000", memberCount: "1000" });
    expect(await d.takeEvents()).toEqual([]);

    // After one leaves there is room for exactly one.
    await d.conversations.leaveGroup(others[0] as string, id);
    const added = await d.conversations.addMembers("owner", id, [others[999] as string]);
    expect(added.conversation.conversation.memberCount).toBe(1000);
    const [snapshot] = membershipEvents(await d.takeEvents()).slice(-1);
    expect(snapshot?.event.members.length).toBe(1000);
    expect(snapshot?.event.version).toBe(3n);
  });
});

describe("roles", () => {
  it("lets only admins and the owner rename, add and remove", async () => {
    const { d, id } = await groupWithRoles();
    await expectError(
      d.conversations.renameGroup("carol", id, "mine"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.addMembers("carol", id, ["erin"]),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.removeMembers("carol", id, ["dave"]),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.setMemberRole("carol", id, "dave", "admin"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    expect(await d.takeEvents()).toEqual([]);

    const renamed = await d.conversations.renameGroup("bob", id, "renamed");
    expect(renamed.conversation.name).toBe("renamed");
    const added = await d.conversations.addMembers("bob", id, ["erin", "carol"]);
    expect([added.added, added.alreadyMembers]).toEqual([["erin"], ["carol"]]);
    const removed = await d.conversations.removeMembers("bob", id, ["dave", "nobody"]);
    expect([removed.removed, removed.notMembers]).toEqual([["dave"], ["nobody"]]);
    expect(await roles(d, "alice", id)).toEqual([
      ["alice", "owner"],
      ["bob", "admin"],
      ["carol", "member"],
      ["erin", "member"],
    ]);
  });

  it("admins may add only their own connections, and never remove admins or the owner", async () => {
    const { d, id } = await groupWithRoles();
    await createUsers(d, "frank");
    await connect(d, "alice", "frank");
    const err = await expectError(
      d.conversations.addMembers("bob", id, ["frank"]),
      "not_found",
      Reason.notAConnection,
    );
    expect(err.metadata.userIds).toBe("frank");
    await d.conversations.setMemberRole("alice", id, "carol", "admin");
    await expectError(
      d.conversations.removeMembers("bob", id, ["carol"]),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.removeMembers("bob", id, ["alice"]),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    // Refused as a whole: Dave (a member) is still there too.
    await expectError(
      d.conversations.removeMembers("bob", id, ["dave", "carol"]),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    expect((await roles(d, "alice", id)).map(([u]) => u)).toContain("dave");
    // The owner removes anyone.
    await d.conversations.removeMembers("alice", id, ["bob", "carol"]);
    expect((await roles(d, "alice", id)).map(([u]) => u)).toEqual(["alice", "dave"]);
  });

  it("admins promote members only; the owner sets any role", async () => {
    const { d, id } = await groupWithRoles();
    const promoted = await d.conversations.setMemberRole("bob", id, "carol", "admin");
    expect(promoted.member).toMatchObject({
      member: { userId: "carol", role: "admin" },
      profile: { displayName: "User carol" },
    });
    await expectError(
      d.conversations.setMemberRole("bob", id, "carol", "member"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.setMemberRole("bob", id, "alice", "member"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await expectError(
      d.conversations.setMemberRole("bob", id, "dave", "owner"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await d.conversations.setMemberRole("alice", id, "carol", "member");
    await expectError(
      d.conversations.setMemberRole("alice", id, "erin", "admin"),
      "not_found",
      Reason.memberNotFound,
    );
    expect(await roles(d, "alice", id)).toEqual([
      ["alice", "owner"],
      ["bob", "admin"],
      ["carol", "member"],
      ["dave", "member"],
    ]);
  });

  it("transfers ownership: the new owner is alone as owner, the old one becomes admin", async () => {
    const { d, id } = await groupWithRoles();
    const result = await d.conversations.setMemberRole("alice", id, "dave", "owner");
    expect(result.conversation).toMatchObject({
      role: "admin",
      conversation: { ownerUserId: "dave", membershipVersion: 3 },
    });
    expect(await roles(d, "dave", id)).toEqual([
      ["dave", "owner"],
      ["alice", "admin"],
      ["bob", "admin"],
      ["carol", "member"],
    ]);
    const [event] = membershipEvents(await d.takeEvents());
    expect(event?.event.version).toBe(3n);
    expect(event?.event.changes.map((c) => [c.userId, c.kind, c.role])).toEqual([
      ["dave", MemberChangeKind.ROLE_CHANGED, MemberRole.OWNER],
      ["alice", MemberChangeKind.ROLE_CHANGED, MemberRole.ADMIN],
    ]);
    // Alice is no longer the owner: she may not demote Bob any more, Dave may.
    await expectError(
      d.conversations.setMemberRole("alice", id, "bob", "member"),
      "permission_denied",
      Reason.roleNotAllowed,
    );
    await d.conversations.setMemberRole("dave", id, "bob", "member");
  });
});

describe("leaving", () => {
  it("a member leaves; the owner must transfer first; the last member ends the group", async () => {
    const { d, id } = await groupWithRoles();
    d.clock.advance(1000);
    expect(await d.conversations.leaveGroup("carol", id)).toEqual({ leftAt: new Date(T0.getTime() + 1000) });
    await expectError(d.conversations.getConversation("carol", id), "not_found", Reason.conversationNotFound);
    await expectError(d.conversations.leaveGroup("carol", id), "not_found", Reason.conversationNotFound);
    await expectError(
      d.conversations.leaveGroup("alice", id),
      "failed_precondition",
      Reason.ownerMustTransfer,
    );
    await d.conversations.leaveGroup("bob", id);
    await d.conversations.leaveGroup("dave", id);
    await d.takeEvents();
    await d.conversations.leaveGroup("alice", id);
    await expectError(d.conversations.getConversation("alice", id), "not_found", Reason.conversationNotFound);
    const [ended] = membershipEvents(await d.takeEvents());
    expect(ended?.event).toMatchObject({ deleted: true, members: [], version: 6n });
    const groups = await d.conversations.listConversations("alice", {
      kind: "group",
      pageSize: 0,
      pageToken: "",
    });
    expect(groups.items).toEqual([]);
  });
});

describe("membership versions and events", () => {
  it("increase on every membership or role change and not on a rename, which has its own event", async () => {
    const { d, id } = await groupWithRoles();
    const version = async () =>
      (await d.conversations.getConversation("alice", id)).conversation.membershipVersion;
    expect(await version()).toBe(2);
    await d.conversations.renameGroup("alice", id, "new name");
    expect(await version()).toBe(2);
    const [renamed] = await d.takeEvents();
    if (renamed?.topic !== Topics.groups) throw new Error("expected GroupRenamed");
    expect(renamed.key).toBe(id);
    expect(renamed.event).toMatchObject({ conversationId: id, name: "new name", changedByUserId: "alice" });
    // The same name again changes nothing.
    await d.conversations.renameGroup("alice", id, "new name");
    expect(await d.takeEvents()).toEqual([]);

    await d.conversations.addMembers("alice", id, ["erin"]);
    await d.conversations.removeMembers("alice", id, ["dave"]);
    await d.conversations.leaveGroup("carol", id);
    expect(await version()).toBe(5);
    const events = membershipEvents(await d.takeEvents());
    expect(events.map((e) => e.event.version)).toEqual([3n, 4n, 5n]);
    expect(events.map((e) => e.event.changes.map((c) => [c.userId, c.kind]))).toEqual([
      [["erin", MemberChangeKind.ADDED]],
      [["dave", MemberChangeKind.REMOVED]],
      [["carol", MemberChangeKind.REMOVED]],
    ]);
    expect(events.at(-1)?.event.members.map((m) => [m.userId, m.role])).toEqual([
      ["alice", MemberRole.OWNER],
      ["bob", MemberRole.ADMIN],
      ["erin", MemberRole.MEMBER],
    ]);
  });

  it("idempotent adds and removes change nothing and announce nothing", async () => {
    const { d, id } = await groupWithRoles();
    const added = await d.conversations.addMembers("alice", id, ["bob", "carol"]);
    expect([added.added, added.alreadyMembers]).toEqual([[], ["bob", "carol"]]);
    const removed = await d.conversations.removeMembers("alice", id, ["erin"]);
    expect([removed.removed, removed.notMembers]).toEqual([[], ["erin"]]);
    expect(added.conversation.conversation.membershipVersion).toBe(2);
    expect(await d.takeEvents()).toEqual([]);
  });

  it("applies concurrent changes to one group one after the other", async () => {
    const { d, id } = await groupWithRoles();
    await createUsers(d, "frank");
    await connect(d, "alice", "frank");
    await Promise.all([
      d.conversations.addMembers("alice", id, ["erin"]),
      d.conversations.addMembers("alice", id, ["frank"]),
      d.conversations.removeMembers("bob", id, ["dave"]),
    ]);
    const conversation = await d.conversations.getConversation("alice", id);
    expect(conversation.conversation).toMatchObject({ membershipVersion: 5, memberCount: 5 });
    const versions = membershipEvents(await d.takeEvents())
      .filter((e) => e.key === id)
      .map((e) => e.event.version);
    expect(versions).toEqual([3n, 4n, 5n]);
  });
});

describe("privacy and kinds", () => {
  it("answers NOT_FOUND for conversations the caller is not in, whether or not they exist", async () => {
    const { d, id } = await groupWithRoles();
    const missing = "0190f5c1-0000-7000-8000-0000000fffff";
    for (const [caller, conversation] of [
      ["erin", id],
      ["erin", missing],
    ] as const) {
      await expectError(
        d.conversations.getConversation(caller, conversation),
        "not_found",
        Reason.conversationNotFound,
      );
      await expectError(
        d.conversations.listMembers(caller, conversation, { pageSize: 0, pageToken: "" }),
        "not_found",
        Reason.conversationNotFound,
      );
      await expectError(
        d.conversations.renameGroup(caller, conversation, "x"),
        "not_found",
        Reason.conversationNotFound,
      );
      await expectError(
        d.conversations.addMembers(caller, conversation, ["bob"]),
        "not_found",
        Reason.conversationNotFound,
      );
      await expectError(
        d.conversations.leaveGroup(caller, conversation),
        "not_found",
        Reason.conversationNotFound,
      );
      await expectError(
        d.conversations.setMemberRole(caller, conversation, "bob", "admin"),
        "not_found",
        Reason.conversationNotFound,
      );
    }
  });

  it("refuses group operations on a direct conversation with NOT_A_GROUP", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob");
    await connect(d, "alice", "bob");
    const id = directConversationId("alice", "bob");
    await expectError(d.conversations.renameGroup("alice", id, "x"), "failed_precondition", Reason.notAGroup);
    await expectError(
      d.conversations.addMembers("alice", id, ["bob"]),
      "failed_precondition",
      Reason.notAGroup,
    );
    await expectError(
      d.conversations.removeMembers("alice", id, ["bob"]),
      "failed_precondition",
      Reason.notAGroup,
    );
    await expectError(d.conversations.leaveGroup("alice", id), "failed_precondition", Reason.notAGroup);
    await expectError(
      d.conversations.setMemberRole("alice", id, "bob", "admin"),
      "failed_precondition",
      Reason.notAGroup,
    );
    const members = await d.conversations.listMembers("alice", id, { pageSize: 0, pageToken: "" });
    expect(members.items.map((m) => [m.member.userId, m.member.role])).toEqual([
      ["alice", "member"],
      ["bob", "member"],
    ]);
  });
});

describe("listing", () => {
  it("pages through members in one snapshot: owner, admins, members, each by user id", async () => {
    const d = createTestDomain();
    const others = Array.from({ length: 30 }, (_, i) => `m${String(i).padStart(2, "0")}`);
    await createUsers(d, "owner", ...others);
    await connect(d, "owner", ...others);
    const id = (await d.conversations.createGroup("owner", "g", others, "")).conversation.conversationId;
    await d.conversations.setMemberRole("owner", id, "m29", "admin");
    await d.conversations.setMemberRole("owner", id, "m10", "admin");
    const seen: string[] = [];
    const versions = new Set<number>();
    let token = "";
    let pages = 0;
    do {
      const page = await d.conversations.listMembers("m05", id, { pageSize: 7, pageToken: token });
      seen.push(...page.items.map((m) => m.member.userId));
      versions.add(page.membershipVersion);
      token = page.nextPageToken;
      pages++;
    } while (token !== "");
    expect(pages).toBe(5);
    expect(versions).toEqual(new Set([3]));
    expect(seen).toEqual(["owner", "m10", "m29", ...others.filter((o) => o !== "m10" && o !== "m29")]);
  });

  it("fails the next page with ABORTED when membership changed since the first page", async () => {
    const { d, id } = await groupWithRoles();
    const first = await d.conversations.listMembers("alice", id, { pageSize: 2, pageToken: "" });
    await d.conversations.leaveGroup("dave", id);
    await expectError(
      d.conversations.listMembers("alice", id, { pageSize: 2, pageToken: first.nextPageToken }),
      "aborted",
      Reason.membershipChanged,
    );
    await expectError(
      d.conversations.listMembers("alice", id, { pageSize: 2, pageToken: "garbage!" }),
      "invalid_argument",
      Reason.invalidPageToken,
    );
    // A token is bound to its conversation and caller.
    await expectError(
      d.conversations.listMembers("bob", id, { pageSize: 2, pageToken: first.nextPageToken }),
      "invalid_argument",
      Reason.invalidPageToken,
    );
  });

  it("pages through the caller's conversations by id, optionally of one kind", async () => {
    const d = createTestDomain();
    await createUsers(d, "alice", "bob", "carol");
    await connect(d, "alice", "bob", "carol");
    const groups: string[] = [];
    for (let i = 0; i < 5; i++) {
      groups.push(
        (await d.conversations.createGroup("alice", `g${i}`, ["bob"], "")).conversation.conversationId,
      );
    }
    const directs = [directConversationId("alice", "bob"), directConversationId("alice", "carol")];
    const all = [...groups, ...directs].sort();
    const seen: string[] = [];
    let token = "";
    do {
      const page = await d.conversations.listConversations("alice", {
        kind: undefined,
        pageSize: 3,
        pageToken: token,
      });
      seen.push(...page.items.map((c) => c.conversation.conversationId));
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen).toEqual(all);
    const onlyDirect = await d.conversations.listConversations("alice", {
      kind: "direct",
      pageSize: 0,
      pageToken: "",
    });
    expect(onlyDirect.items.map((c) => [c.conversation.conversationId, c.direct?.otherUserId])).toEqual(
      directs.map((id) => [id, id === directConversationId("alice", "bob") ? "bob" : "carol"]).sort(),
    );
    const bobsGroups = await d.conversations.listConversations("bob", {
      kind: "group",
      pageSize: 0,
      pageToken: "",
    });
    // Group ids are UUIDv7: by id is by creation.
    expect(bobsGroups.items.map((c) => [c.conversation.name, c.role])).toEqual(
      groups.map((_, i) => [`g${i}`, "member"]),
    );
  });
});

describe("durability", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it("keeps contacts, groups and unpublished events across reopening the SQLite file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-connection-"));
    dirs.push(dir);
    const path = join(dir, "parley.db");
    const first = createTestDomain({ store: createSqliteConnectionStore({ path }) });
    await createUsers(first, "alice", "bob", "carol");
    await connect(first, "alice", "bob", "carol");
    const id = (await first.conversations.createGroup("alice", "kept", ["bob", "carol"], REQUEST_ID))
      .conversation.conversationId;
    const written = (await first.store.outbox.pending(1000)).length;
    await first.store.close();

    const second = createTestDomain({ store: createSqliteConnectionStore({ path }) });
    expect((await second.conversations.getConversation("bob", id)).conversation).toMatchObject({
      name: "kept",
      memberCount: 3,
    });
    const bobs = await second.contacts.listConnections("bob", { states: [], pageSize: 0, pageToken: "" });
    expect(bobs.items.map((c) => [c.otherUserId, c.state])).toEqual([["alice", "accepted"]]);
    expect(
      (await second.conversations.createGroup("alice", "kept", ["carol", "bob"], REQUEST_ID)).conversation
        .conversationId,
    ).toBe(id);
    const events = await second.takeEvents();
    expect(events.length).toBe(written);
    expect(membershipEvents(events).at(-1)?.key).toBe(id);
    await second.store.close();
  });
});
