import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import { openCassandra } from "../../../../lib/cassandra/session.ts";
import { engineTargets, uniqueTestName } from "../../../../lib/engines.ts";
import { createLogger } from "../../../../lib/logging.ts";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import { describeConnectionStoreContract } from "../../domain/connection-store.contract.ts";
import type { PairCommit } from "../../domain/connection-store.ts";
import { StoreConflictError } from "../../domain/connection-store.ts";
import type { ConversationRecord, MemberRecord, PairKey, ViewRecord } from "../../domain/model.ts";
import { pairKey } from "../../domain/model.ts";
import type { CassandraConnectionStore, CommitCrashPoint } from "./cassandra-connection-store.ts";
import { createCassandraConnectionStore } from "./cassandra-connection-store.ts";
import { applyCommitEffects, decodeCommitEffects, planBatches } from "./commit-effects.ts";
import { CONNECTION_TABLES } from "./migrations.ts";

const targets = engineTargets();
const logger = createLogger("connection-cassandra-test", "silent");

const T0 = new Date("2030-01-02T03:04:05.678Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

function event(key: string, text: string): OutboxEvent {
  return { topic: "chat.contacts", key, payload: new TextEncoder().encode(text), properties: {} };
}

function view(userId: string, otherUserId: string, state: ViewRecord["state"], seconds = 0): ViewRecord {
  return { userId, otherUserId, state, createdAt: at(seconds), updatedAt: at(seconds) };
}

function group(id: string, members: number, version = 1): ConversationRecord {
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
  };
}

function member(conversationId: string, userId: string, role: MemberRecord["role"] = "member"): MemberRecord {
  return { conversationId, userId, role, joinedAt: at(0) };
}

function directOf(pair: PairKey, version: number): PairCommit["direct"] {
  const conversationId = `direct-${pair.low}-${pair.high}`;
  return {
    conversation: {
      conversationId,
      kind: "direct",
      name: "",
      ownerUserId: "",
      directUsers: pair,
      membershipVersion: version,
      memberCount: 2,
      createdAt: at(version),
      updatedAt: at(version),
      deleted: false,
    },
    members: [member(conversationId, pair.low), member(conversationId, pair.high)],
  };
}

/** The hook of a writer that dies at `point`, once. */
function dyingAt(point: CommitCrashPoint) {
  let died = false;
  return (reached: CommitCrashPoint) => {
    if (reached === point && !died) {
      died = true;
      throw new Error(`writer died at ${point}`);
    }
  };
}

describe.runIf(targets)("cassandra connection store (real Cassandra)", () => {
  let client: CassandraClient;
  const keyspace = uniqueTestName("parley_connection");

  beforeAll(async () => {
    if (!targets) return;
    client = await openCassandra({
      contactPoints: targets.cassandraContactPoints,
      localDataCenter: targets.cassandraDatacenter,
      keyspace,
      logger,
    });
    // Creates the tables once; every case then starts from empty tables.
    await (await makeStore()).close();
  });
  afterAll(async () => {
    await client?.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`);
    await client?.shutdown();
  });

  const makeStore = (crashAt?: (point: CommitCrashPoint) => void) =>
    createCassandraConnectionStore({
      client,
      logger,
      recovery: { intervalMs: 0, lookbackMs: 10 * 60_000 },
      ...(crashAt === undefined ? {} : { crashAt }),
    });
  const emptyTables = () =>
    Promise.all(CONNECTION_TABLES.map((table) => client.execute(`TRUNCATE ${table}`)));
  const rows = async (query: string, params: unknown[]) => (await client.execute(query, params)).rows;
  const pendingTexts = async (store: CassandraConnectionStore) =>
    (await store.outbox.pending(10_000)).map((e) => new TextDecoder().decode(e.payload));

  describeConnectionStoreContract("cassandra", async () => {
    await emptyTables();
    return makeStore();
  });

  describe("a writer dying half-way through a commit", () => {
    beforeEach(emptyTables);

    const ab = pairKey("alice", "bob");
    const request: PairCommit = {
      pair: ab,
      expectedVersion: 0,
      version: 1,
      lowView: view("alice", "bob", "pending_outgoing", 1),
      highView: view("bob", "alice", "pending_incoming", 1),
      events: [event("alice/bob", "requested")],
    };

    it("leaves the effects of a decided pair change to its next reader, which writes them once", async () => {
      const dying = await makeStore(dyingAt("after-owner-write"));
      await expect(dying.commitPair(request)).rejects.toThrow(/writer died/);

      // The control: the change is decided, and nothing it derives is written yet.
      expect(await rows("SELECT * FROM connection_views WHERE user_id = ?", ["alice"])).toEqual([]);
      expect(await pendingTexts(dying)).toEqual([]);

      const next = await makeStore();
      expect(await next.getPair(ab)).toEqual({
        pair: ab,
        version: 1,
        lowView: request.lowView,
        highView: request.highView,
      });
      expect(await next.listViews("alice", { limit: 10 })).toEqual([request.lowView]);
      expect(await next.listViews("bob", { states: ["pending_incoming"], limit: 10 })).toEqual([
        request.highView,
      ]);
      expect(await next.getViewsTowards(["bob"], "alice")).toEqual([request.highView]);
      await next.getPair(ab);
      expect(await pendingTexts(next)).toEqual(["requested"]);
      await Promise.all([dying.close(), next.close()]);
    });

    it("has the next committer roll the earlier change forward before its own, and ignores a late replay", async () => {
      const dying = await makeStore(dyingAt("after-owner-write"));
      await expect(dying.commitPair(request)).rejects.toThrow(/writer died/);
      const [stored] = await rows(
        "SELECT pending FROM connection_pairs WHERE low_user_id = ? AND high_user_id = ?",
        [ab.low, ab.high],
      );
      const firstEffects = stored?.get("pending") as Buffer;

      const next = await makeStore();
      await next.commitPair({
        pair: ab,
        expectedVersion: 1,
        version: 2,
        lowView: view("alice", "bob", "accepted", 2),
        highView: view("bob", "alice", "accepted", 2),
        direct: directOf(ab, 1),
        events: [event("alice/bob", "accepted")],
      });
      const check = async () => {
        expect((await next.getPair(ab)).version).toBe(2);
        expect(await next.listViews("alice", { limit: 10 })).toEqual([view("alice", "bob", "accepted", 2)]);
        expect(await next.listViews("alice", { states: ["pending_outgoing"], limit: 10 })).toEqual([]);
        expect(await next.listViews("bob", { states: ["accepted"], limit: 10 })).toHaveLength(1);
        expect(await next.shareConversation("alice", "bob")).toBe(true);
        expect(await pendingTexts(next)).toEqual(["requested", "accepted"]);
      };
      await check();

      // The first commit's effects arriving again (a slow writer, a batch log replay) lose to the
      // later commit's timestamps and write the same event row again, not a second one.
      await applyCommitEffects(client, decodeCommitEffects(firstEffects));
      await check();
      await Promise.all([dying.close(), next.close()]);
    });

    it("rolls a half-applied group creation forward for the next reader of its members", async () => {
      const ids = Array.from({ length: 400 }, (_, i) => `m${String(i).padStart(3, "0")}`);
      const members = [member("big", "owner", "owner"), ...ids.map((id) => member("big", id))];
      const dying = await makeStore(dyingAt("between-effect-batches"));
      const creation = {
        conversation: group("big", members.length),
        members,
        events: [event("big", "created")],
      };
      await expect(dying.createGroup(creation)).rejects.toThrow(/writer died/);
      // The first batch (the conversation's own partition) is written, the members' listings not.
      expect(await rows("SELECT * FROM connection_memberships WHERE user_id = ?", ["m399"])).toEqual([]);

      const next = await makeStore();
      const page = await next.listMembers("big", { limit: 1000 });
      expect(page.membershipVersion).toBe(1);
      expect(page.members.map((m) => m.userId)).toEqual(["owner", ...ids]);
      expect(
        (await next.listMemberships("m399", { limit: 10 })).map((m) => m.conversation.conversationId),
      ).toEqual(["big"]);
      expect(await pendingTexts(next)).toEqual(["created"]);
      await Promise.all([dying.close(), next.close()]);
    });

    it("finishes a group whose request id was claimed when its writer died", async () => {
      const claim = { userId: "owner", requestId: "r1", conversationId: "g1", fingerprint: "f" };
      const creation = {
        conversation: group("g1", 2),
        members: [member("g1", "owner", "owner"), member("g1", "amy")],
        request: claim,
        events: [event("g1", "created")],
      };
      const dying = await makeStore(dyingAt("after-claim"));
      await expect(dying.createGroup(creation)).rejects.toThrow(/writer died/);
      expect(await rows("SELECT * FROM connection_conversations WHERE conversation_id = ?", ["g1"])).toEqual(
        [],
      );

      const next = await makeStore();
      expect(await next.getGroupRequest("owner", "r1")).toEqual(claim);
      expect(await next.getConversation("g1")).toEqual(group("g1", 2));
      expect(await next.getAllMembers("g1")).toEqual([member("g1", "amy"), member("g1", "owner", "owner")]);
      expect(await next.createGroup(creation)).toEqual({ created: false, existing: claim });
      expect(await pendingTexts(next)).toEqual(["created"]);
      await Promise.all([dying.close(), next.close()]);
    });

    it("is found by the recovery sweep when nobody reads the pair again", async () => {
      const dying = await makeStore(dyingAt("after-owner-write"));
      await expect(dying.commitPair(request)).rejects.toThrow(/writer died/);
      const never = await makeStore(dyingAt("before-owner-write"));
      const cd = pairKey("carol", "dave");
      await expect(
        never.commitPair({
          ...request,
          pair: cd,
          lowView: view("carol", "dave", "blocked"),
          highView: undefined,
        }),
      ).rejects.toThrow(/writer died/);

      const sweeper = await makeStore();
      // Derived listings lag until the sweep: the documented window.
      expect(await sweeper.listViews("alice", { limit: 10 })).toEqual([]);
      // Nothing is old enough yet.
      expect(await sweeper.recoverPendingCommits()).toBe(0);
      const later = Date.now() + 3 * 60_000;
      expect(await sweeper.recoverPendingCommits(later)).toBe(1);
      expect(await sweeper.listViews("alice", { limit: 10 })).toEqual([request.lowView]);
      expect(await pendingTexts(sweeper)).toEqual(["requested"]);
      // The intent of the commit that never reached its LWT is dropped, and the pair untouched.
      expect((await sweeper.getPair(cd)).version).toBe(0);
      expect(await rows("SELECT * FROM connection_commit_intents", [])).toEqual([]);
      expect(await sweeper.recoverPendingCommits(later)).toBe(0);
      await Promise.all([dying.close(), never.close(), sweeper.close()]);
    });
  });

  describe("concurrent writers", () => {
    beforeEach(emptyTables);

    it("lets exactly one of many commits based on the same pair version through", async () => {
      const store = await makeStore();
      const ab = pairKey("alice", "bob");
      const attempts = Array.from({ length: 6 }, (_, i) =>
        store.commitPair({
          pair: ab,
          expectedVersion: 0,
          version: 1,
          lowView: view("alice", "bob", "pending_outgoing", i),
          highView: view("bob", "alice", "pending_incoming", i),
          events: [event("alice/bob", `attempt ${i}`)],
        }),
      );
      const results = await Promise.allSettled(attempts);
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      expect(won).toHaveLength(1);
      for (const r of results) {
        if (r.status === "rejected") expect(r.reason).toBeInstanceOf(StoreConflictError);
      }
      const winner = won[0] ?? -1;
      expect((await store.getPair(ab)).lowView).toEqual(view("alice", "bob", "pending_outgoing", winner));
      expect(await store.listViews("alice", { limit: 10 })).toEqual([
        view("alice", "bob", "pending_outgoing", winner),
      ]);
      expect(await pendingTexts(store)).toEqual([`attempt ${winner}`]);
      await store.close();
    });

    it("serializes membership changes: one of several based on one version wins, renames all apply", async () => {
      const store = await makeStore();
      await store.createGroup({
        conversation: group("g1", 1),
        members: [member("g1", "owner", "owner")],
        events: [],
      });
      const adds = await Promise.allSettled(
        ["a", "b", "c", "d"].map((id) =>
          store.commitConversation({
            conversation: group("g1", 2, 2),
            expectedVersion: 1,
            upsertMembers: [member("g1", id)],
            removeMemberIds: [],
            events: [event("g1", `add ${id}`)],
          }),
        ),
      );
      expect(adds.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      const members = await store.getAllMembers("g1");
      expect(members).toHaveLength(2);
      const added = members.find((m) => m.userId !== "owner")?.userId;
      expect(await pendingTexts(store)).toEqual([`add ${added}`]);

      // A rename keeps the membership version, so both commits based on it apply, one after the other.
      await Promise.all(
        ["x", "y"].map((name) =>
          store.commitConversation({
            conversation: { ...group("g1", 2, 2), name },
            expectedVersion: 2,
            upsertMembers: [],
            removeMemberIds: [],
            events: [event("g1", `rename ${name}`)],
          }),
        ),
      );
      expect(["x", "y"]).toContain((await store.getConversation("g1"))?.name);
      expect((await pendingTexts(store)).slice(1).sort()).toEqual(["rename x", "rename y"]);
      await store.close();
    });
  });

  it("splits a large change into batches the server accepts, each partition whole", async () => {
    const store = await makeStore();
    await store.close();
    const effects = {
      partitions: [
        Array.from({ length: 1000 }, (_, i) => ({
          query: "INSERT INTO connection_conversations (conversation_id, user_id) VALUES (?, ?)",
          params: ["big", `u${i}`],
        })),
        ...Array.from({ length: 1000 }, (_, i) => [
          {
            query: "INSERT INTO connection_memberships (user_id, kind, conversation_id) VALUES (?, ?, ?)",
            params: [`u${i}`, "group", "big"],
          },
        ]),
      ],
      final: [
        {
          query: "UPDATE connection_conversations SET applied_ts = 1 WHERE conversation_id = ?",
          params: ["big"],
        },
      ],
    };
    const batches = planBatches(effects);
    expect(batches.length).toBeGreaterThan(2);
    expect(batches[0]?.statements).toHaveLength(1000);
    expect(batches[0]?.logged).toBe(false);
    expect(batches.at(-1)?.statements).toEqual(effects.final);
    await applyCommitEffects(client, effects);
    expect(await rows("SELECT user_id FROM connection_memberships WHERE user_id = ?", ["u999"])).toHaveLength(
      1,
    );
  });
});
