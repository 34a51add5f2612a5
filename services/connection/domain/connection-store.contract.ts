// The contract every ConnectionStore adapter passes (embedded SQLite now, Cassandra later). It
// speaks only through the port; each adapter's test file calls describeConnectionStoreContract.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { OutboxEvent } from "../../../lib/outbox.ts";
import type { ConnectionStore, PairCommit } from "./connection-store.ts";
import { StoreConflictError } from "./connection-store.ts";
import type { ConversationRecord, MemberRecord, MemberRole, PairKey, ViewRecord } from "./model.ts";
import { pairKey } from "./model.ts";

export type MakeConnectionStore = () => ConnectionStore | Promise<ConnectionStore>;

const T0 = new Date("2030-01-02T03:04:05.678Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

function event(topic: string, key: string, text: string): OutboxEvent {
  return { topic, key, payload: new TextEncoder().encode(text), properties: { traceparent: "" } };
}

function view(userId: string, otherUserId: string, state: ViewRecord["state"], seconds = 0): ViewRecord {
  return { userId, otherUserId, state, createdAt: at(seconds), updatedAt: at(seconds) };
}

function group(
  id: string,
  members: number,
  version = 1,
  overrides: Partial<ConversationRecord> = {},
): ConversationRecord {
  return {
    conversationId: id,
    kind: "group",
    name: `group ${id}`,
    ownerUserId: "owner",
    directUsers: undefined,
    membershipVersion: version,
    memberCount: members,
    createdAt: at(0),
    updatedAt: at(0),
    deleted: false,
    ...overrides,
  };
}

function member(
  conversationId: string,
  userId: string,
  role: MemberRole = "member",
  seconds = 0,
): MemberRecord {
  return { conversationId, userId, role, joinedAt: at(seconds) };
}

function direct(pair: PairKey, version: number, live: boolean): PairCommit["direct"] {
  const conversationId = `direct-${pair.low}-${pair.high}`;
  return {
    conversation: {
      conversationId,
      kind: "direct",
      name: "",
      ownerUserId: "",
      directUsers: pair,
      membershipVersion: version,
      memberCount: live ? 2 : 0,
      createdAt: at(1),
      updatedAt: at(version),
      deleted: !live,
    },
    members: live
      ? [member(conversationId, pair.low, "member", 1), member(conversationId, pair.high, "member", 1)]
      : [],
  };
}

const userIds = (n: number, prefix = "u") =>
  Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, "0")}`);

export function describeConnectionStoreContract(name: string, makeStore: MakeConnectionStore): void {
  describe(`ConnectionStore contract: ${name}`, () => {
    let store: ConnectionStore;
    beforeEach(async () => {
      store = await makeStore();
    });
    afterEach(async () => {
      await store.close();
    });

    const pending = async () => store.outbox.pending(10_000);

    describe("users and profiles", () => {
      it("knows no user until one is registered or sets a profile", async () => {
        expect((await store.getUsers(["alice"])).size).toBe(0);
        await store.registerUser("alice", at(1));
        const alice = (await store.getUsers(["alice", "bob"])).get("alice");
        expect(alice).toEqual({
          userId: "alice",
          displayName: "",
          avatarUrl: "",
          profileUpdatedAt: undefined,
          createdAt: at(1),
        });
        expect((await store.getUsers(["bob"])).size).toBe(0);
      });

      it("stores a profile, replaces it on the next upsert, and never lets a registration overwrite it", async () => {
        const first = await store.upsertProfile({
          userId: "alice",
          displayName: "Alice",
          avatarUrl: "",
          at: at(1),
        });
        expect(first).toMatchObject({
          displayName: "Alice",
          avatarUrl: "",
          profileUpdatedAt: at(1),
          createdAt: at(1),
        });
        const second = await store.upsertProfile({
          userId: "alice",
          displayName: "Alice B.",
          avatarUrl: "https://example.com/a.png",
          at: at(2),
        });
        expect(second).toEqual({
          userId: "alice",
          displayName: "Alice B.",
          avatarUrl: "https://example.com/a.png",
          profileUpdatedAt: at(2),
          createdAt: at(1),
        });
        await store.registerUser("alice", at(3));
        expect((await store.getUsers(["alice"])).get("alice")).toEqual(second);
      });
    });

    describe("pairs", () => {
      const ab = pairKey("alice", "bob");

      it("reads a pair that never interacted as version 0 without views", async () => {
        expect(await store.getPair(ab)).toEqual({
          pair: ab,
          version: 0,
          lowView: undefined,
          highView: undefined,
        });
      });

      it("writes both views, the version and the events of a commit together", async () => {
        await store.commitPair({
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("alice", "bob", "pending_outgoing", 1),
          highView: view("bob", "alice", "pending_incoming", 1),
          events: [event("chat.contacts", "alice/bob", "one"), event("chat.blocks", "alice/bob", "two")],
        });
        expect(await store.getPair(ab)).toEqual({
          pair: ab,
          version: 1,
          lowView: view("alice", "bob", "pending_outgoing", 1),
          highView: view("bob", "alice", "pending_incoming", 1),
        });
        const events = await pending();
        expect(
          events.map((e) => [e.topic, e.key, new TextDecoder().decode(e.payload), e.properties]),
        ).toEqual([
          ["chat.contacts", "alice/bob", "one", { traceparent: "" }],
          ["chat.blocks", "alice/bob", "two", { traceparent: "" }],
        ]);
      });

      it("refuses a commit based on a stale version and writes nothing of it", async () => {
        const commit: PairCommit = {
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("alice", "bob", "blocked"),
          highView: undefined,
          events: [event("chat.blocks", "alice/bob", "first")],
        };
        await store.commitPair(commit);
        await expect(
          store.commitPair({
            ...commit,
            lowView: view("alice", "bob", "pending_outgoing"),
            events: [event("x", "k", "lost")],
          }),
        ).rejects.toBeInstanceOf(StoreConflictError);
        expect((await store.getPair(ab)).lowView?.state).toBe("blocked");
        expect((await pending()).map((e) => e.topic)).toEqual(["chat.blocks"]);
      });

      it("deletes a view committed as undefined", async () => {
        await store.commitPair({
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("alice", "bob", "accepted"),
          highView: view("bob", "alice", "accepted"),
          events: [],
        });
        await store.commitPair({
          pair: ab,
          expectedVersion: 1,
          version: 2,
          lowView: view("alice", "bob", "blocked", 5),
          highView: undefined,
          events: [],
        });
        const pair = await store.getPair(ab);
        expect(pair.version).toBe(2);
        expect(pair.highView).toBeUndefined();
        expect(await store.getViews("bob", ["alice"])).toEqual([]);
        expect(await store.getViewsTowards(["alice"], "bob")).toEqual([view("alice", "bob", "blocked", 5)]);
      });

      it("creates, ends and restores a direct conversation with the pair, keeping its version", async () => {
        await store.commitPair({
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("alice", "bob", "accepted"),
          highView: view("bob", "alice", "accepted"),
          direct: direct(ab, 1, true),
          events: [],
        });
        const id = "direct-alice-bob";
        expect(await store.getConversation(id)).toEqual(direct(ab, 1, true)?.conversation);
        expect(await store.getAllMembers(id)).toEqual(direct(ab, 1, true)?.members);
        expect(await store.shareConversation("alice", "bob")).toBe(true);
        expect(
          (await store.listMemberships("bob", { limit: 10 })).map((m) => m.conversation.conversationId),
        ).toEqual([id]);

        await store.commitPair({
          pair: ab,
          expectedVersion: 1,
          version: 2,
          lowView: undefined,
          highView: undefined,
          direct: direct(ab, 2, false),
          events: [],
        });
        expect(await store.getConversation(id)).toMatchObject({
          deleted: true,
          membershipVersion: 2,
          memberCount: 0,
        });
        expect(await store.getAllMembers(id)).toEqual([]);
        expect(await store.shareConversation("alice", "bob")).toBe(false);
        expect(await store.listMemberships("alice", { limit: 10 })).toEqual([]);

        await store.commitPair({
          pair: ab,
          expectedVersion: 2,
          version: 3,
          lowView: view("alice", "bob", "accepted"),
          highView: view("bob", "alice", "accepted"),
          direct: direct(ab, 3, true),
          events: [],
        });
        expect(await store.getConversation(id)).toMatchObject({
          deleted: false,
          membershipVersion: 3,
          memberCount: 2,
        });
        expect((await store.getAllMembers(id)).map((m) => m.userId)).toEqual(["alice", "bob"]);
      });

      it("lists a user's views by other user id, after a cursor, in some states, up to a limit", async () => {
        const others = ["dave", "bob", "erin", "carol"];
        const states: ViewRecord["state"][] = ["accepted", "pending_incoming", "blocked", "accepted"];
        for (const [i, other] of others.entries()) {
          const pair = pairKey("alice", other);
          const mine = view("alice", other, states[i] ?? "accepted");
          await store.commitPair({
            pair,
            expectedVersion: 0,
            version: 1,
            lowView: pair.low === "alice" ? mine : undefined,
            highView: pair.high === "alice" ? mine : undefined,
            events: [],
          });
        }
        const ids = (rows: readonly ViewRecord[]) => rows.map((v) => v.otherUserId);
        expect(ids(await store.listViews("alice", { limit: 10 }))).toEqual(["bob", "carol", "dave", "erin"]);
        expect(ids(await store.listViews("alice", { limit: 2 }))).toEqual(["bob", "carol"]);
        expect(ids(await store.listViews("alice", { afterOtherUserId: "carol", limit: 10 }))).toEqual([
          "dave",
          "erin",
        ]);
        expect(ids(await store.listViews("alice", { states: ["accepted"], limit: 10 }))).toEqual([
          "carol",
          "dave",
        ]);
        expect(
          ids(await store.listViews("alice", { states: ["blocked", "pending_incoming"], limit: 10 })),
        ).toEqual(["bob", "erin"]);
        expect(await store.listViews("bob", { limit: 10 })).toEqual([]);
        expect(ids(await store.getViews("alice", ["erin", "zed", "bob"])).sort()).toEqual(["bob", "erin"]);
      });
    });

    describe("groups", () => {
      it("creates a group with its members and events, and reads them back", async () => {
        const members = [member("g1", "owner", "owner"), member("g1", "m2"), member("g1", "a1", "admin")];
        const result = await store.createGroup({
          conversation: group("g1", 3),
          members,
          events: [event("chat.memberships", "g1", "created")],
        });
        expect(result).toEqual({ created: true });
        expect(await store.getConversation("g1")).toEqual(group("g1", 3));
        expect((await store.getAllMembers("g1")).map((m) => m.userId)).toEqual(["a1", "m2", "owner"]);
        expect(await store.getMembers("g1", ["m2", "nobody"])).toEqual([member("g1", "m2")]);
        expect(await store.shareConversation("m2", "a1")).toBe(true);
        expect(await store.shareConversation("m2", "stranger")).toBe(false);
        expect((await pending()).map((e) => e.key)).toEqual(["g1"]);
      });

      it("claims a request id once: a second create with it writes nothing and returns the first claim", async () => {
        const request = { userId: "owner", requestId: "r1", conversationId: "g1", fingerprint: "f1" };
        await store.createGroup({
          conversation: group("g1", 2),
          members: [member("g1", "owner", "owner"), member("g1", "m")],
          request,
          events: [event("chat.memberships", "g1", "created")],
        });
        const again = await store.createGroup({
          conversation: group("g2", 2),
          members: [member("g2", "owner", "owner"), member("g2", "m")],
          request: { ...request, conversationId: "g2", fingerprint: "f2" },
          events: [event("chat.memberships", "g2", "created")],
        });
        expect(again).toEqual({ created: false, existing: request });
        expect(await store.getConversation("g2")).toBeUndefined();
        expect(await store.getGroupRequest("owner", "r1")).toEqual(request);
        expect(await store.getGroupRequest("owner", "r2")).toBeUndefined();
        expect(await store.getGroupRequest("m", "r1")).toBeUndefined();
        expect((await pending()).map((e) => e.key)).toEqual(["g1"]);
      });

      it("commits membership changes against the version read, and refuses stale ones", async () => {
        await store.createGroup({
          conversation: group("g1", 3),
          members: [member("g1", "owner", "owner"), member("g1", "a"), member("g1", "b")],
          events: [],
        });
        await store.commitConversation({
          conversation: group("g1", 3, 2, { updatedAt: at(9) }),
          expectedVersion: 1,
          upsertMembers: [member("g1", "a", "admin"), member("g1", "c", "member", 9)],
          removeMemberIds: ["b"],
          events: [event("chat.memberships", "g1", "v2")],
        });
        expect(await store.getConversation("g1")).toEqual(group("g1", 3, 2, { updatedAt: at(9) }));
        expect(await store.getAllMembers("g1")).toEqual([
          member("g1", "a", "admin"),
          member("g1", "c", "member", 9),
          member("g1", "owner", "owner"),
        ]);
        await expect(
          store.commitConversation({
            conversation: group("g1", 2, 2),
            expectedVersion: 1,
            upsertMembers: [],
            removeMemberIds: ["c"],
            events: [event("chat.memberships", "g1", "stale")],
          }),
        ).rejects.toBeInstanceOf(StoreConflictError);
        await expect(
          store.commitConversation({
            conversation: group("nope", 1, 2),
            expectedVersion: 1,
            upsertMembers: [],
            removeMemberIds: [],
            events: [],
          }),
        ).rejects.toBeInstanceOf(StoreConflictError);
        expect((await store.getAllMembers("g1")).length).toBe(3);
        expect((await pending()).map((e) => new TextDecoder().decode(e.payload))).toEqual(["v2"]);
      });

      it("drops an ended group from its members' conversations", async () => {
        await store.createGroup({
          conversation: group("g1", 1),
          members: [member("g1", "owner", "owner")],
          events: [],
        });
        await store.commitConversation({
          conversation: group("g1", 0, 2, { deleted: true, ownerUserId: "" }),
          expectedVersion: 1,
          upsertMembers: [],
          removeMemberIds: ["owner"],
          events: [],
        });
        expect(await store.getConversation("g1")).toMatchObject({ deleted: true, memberCount: 0 });
        expect(await store.listMemberships("owner", { limit: 10 })).toEqual([]);
      });

      it("lists members owner first, then admins, then members, each by user id, in consistent pages", async () => {
        const members = [
          member("g1", "zed", "owner"),
          member("g1", "bob", "admin"),
          member("g1", "amy", "admin"),
          member("g1", "carl"),
          member("g1", "abe"),
        ];
        await store.createGroup({ conversation: group("g1", 5, 7), members, events: [] });
        const order = ["zed", "amy", "bob", "abe", "carl"];
        const all = await store.listMembers("g1", { limit: 10 });
        expect(all.membershipVersion).toBe(7);
        expect(all.members.map((m) => m.userId)).toEqual(order);
        const first = await store.listMembers("g1", { limit: 2 });
        expect(first.members.map((m) => m.userId)).toEqual(["zed", "amy"]);
        const second = await store.listMembers("g1", { after: { role: "admin", userId: "amy" }, limit: 2 });
        expect(second.members.map((m) => m.userId)).toEqual(["bob", "abe"]);
        const third = await store.listMembers("g1", { after: { role: "member", userId: "abe" }, limit: 2 });
        expect(third.members.map((m) => m.userId)).toEqual(["carl"]);
        expect(third.membershipVersion).toBe(7);
      });

      it("lists a user's live conversations by id, after a cursor, of one kind", async () => {
        for (const id of ["g3", "g1", "g2"]) {
          await store.createGroup({
            conversation: group(id, 2),
            members: [member(id, "owner", "owner"), member(id, "amy", "admin")],
            events: [],
          });
        }
        const ab = pairKey("amy", "zoe");
        await store.commitPair({
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("amy", "zoe", "accepted"),
          highView: view("zoe", "amy", "accepted"),
          direct: direct(ab, 1, true),
          events: [],
        });
        const ids = async (options: Parameters<ConnectionStore["listMemberships"]>[1]) =>
          (await store.listMemberships("amy", options)).map((m) => m.conversation.conversationId);
        expect(await ids({ limit: 10 })).toEqual(["direct-amy-zoe", "g1", "g2", "g3"]);
        expect(await ids({ limit: 2 })).toEqual(["direct-amy-zoe", "g1"]);
        expect(await ids({ afterConversationId: "g1", limit: 10 })).toEqual(["g2", "g3"]);
        expect(await ids({ kind: "group", limit: 10 })).toEqual(["g1", "g2", "g3"]);
        expect(await ids({ kind: "direct", limit: 10 })).toEqual(["direct-amy-zoe"]);
        const [first] = await store.listMemberships("amy", { kind: "group", limit: 1 });
        expect(first?.member).toEqual(member("g1", "amy", "admin"));
        expect(first?.conversation).toEqual(group("g1", 2));
      });

      it("holds a 1,000-member group and answers member checks and pages over it", async () => {
        const ids = userIds(1000);
        const members = ids.map((id, i) => member("big", id, i === 0 ? "owner" : "member"));
        await store.createGroup({ conversation: group("big", 1000), members, events: [] });
        expect((await store.getMembers("big", [...ids.slice(1), "stranger"])).length).toBe(999);
        expect((await store.getAllMembers("big")).length).toBe(1000);
        const seen: string[] = [];
        let after: { role: MemberRole; userId: string } | undefined;
        for (;;) {
          const page = await store.listMembers("big", {
            ...(after === undefined ? {} : { after }),
            limit: 300,
          });
          seen.push(...page.members.map((m) => m.userId));
          const last = page.members.at(-1);
          if (page.members.length < 300 || last === undefined) break;
          after = { role: last.role, userId: last.userId };
        }
        expect(seen).toEqual(ids);
      });
    });

    describe("outbox", () => {
      it("hands out pending events in write order and forgets published ones", async () => {
        await store.createGroup({
          conversation: group("g1", 1),
          members: [member("g1", "o", "owner")],
          events: [event("t", "k1", "1"), event("t", "k2", "2")],
        });
        await store.createGroup({
          conversation: group("g2", 1),
          members: [member("g2", "o", "owner")],
          events: [event("t", "k3", "3")],
        });
        const first = await store.outbox.pending(2);
        expect(first.map((e) => e.key)).toEqual(["k1", "k2"]);
        await store.outbox.markPublished(first.map((e) => e.id));
        expect((await pending()).map((e) => e.key)).toEqual(["k3"]);
      });
    });
  });
}
