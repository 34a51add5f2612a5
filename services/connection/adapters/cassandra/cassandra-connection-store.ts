/**
 * The ConnectionStore on Cassandra (cluster profile).
 *
 * Data model (migrations.ts): an owner row per pair (`connection_pairs`: version and both views)
 * and per conversation (`connection_conversations`: the record as static columns, one clustering
 * row per member); tables derived from them, partitioned by user, for listings (`views`,
 * `views_by_state`, `views_towards`, `memberships`); group request claims; the outbox.
 *
 * Commits (the pending-commit scheme). A change is decided by one lightweight transaction (LWT)
 * on its owner row but writes many partitions, which no LWT can span. So:
 *   1. The writer reads the owner row; if an earlier commit is still outstanding there (see 3), it
 *      rolls that one forward first. It picks the commit timestamp `ts` = max(now, previous + 2)
 *      and builds the commit's effects: every other write, as statements with
 *      `USING TIMESTAMP ts` (deletes at ts - 1, so an upsert of the same row in the same commit
 *      wins), plus the outbox inserts with event ids chosen now.
 *   2. It records an intent (minute bucket, owner, ts) so a sweep can find the commit if the
 *      writer dies, then the LWT checks the version the domain read (and that the owner's last
 *      commit is applied and unchanged: `commit_ts` and `applied_ts` as read) and writes the new
 *      owner state with `commit_ts = ts` and `pending` = the encoded effects.
 *   3. It applies the effects (one logged batch when they fit, else several, see
 *      commit-effects.ts) and last writes `applied_ts = ts` and deletes the intent. A commit is
 *      outstanding while `applied_ts < commit_ts`.
 * Anyone who finds an outstanding commit (a reader of the owner, the next committer, the recovery
 * sweep over old intents) replays its stored effects; replays are idempotent because later
 * commits of the same owner write with larger timestamps (so a late replay loses to them) and the
 * outbox rows keep the ids chosen once. So a crash after the LWT never leaves a version bumped
 * without its effects for the next reader or writer of that pair or conversation, and its events
 * are written exactly once as rows (published at least once by the relay). A commit call resolves
 * once its effects are written; when they fail after the LWT (a timeout, say) it rejects, but the
 * change stands and is rolled forward like a dead writer's, and the domain's retry reads it.
 *
 * What readers see: getPair, getConversation, getMembers, getAllMembers, listMembers and
 * getGroupRequest read the owner's markers and roll an outstanding commit forward before
 * answering, so they never show a version without its effects. The per-user tables (listViews,
 * getViews, getViewsTowards, listMemberships, shareConversation) and a direct conversation's
 * partition (owned by its pair) lag a commit whose writer died until the pair or conversation is
 * next touched or the recovery sweep runs (every `intervalMs`, for minutes older than `graceMs`).
 *
 * Group creation with a request id claims the id first (LWT IF NOT EXISTS on the claim, which
 * carries the whole creation), then creates the group (LWT IF NOT EXISTS on the conversation);
 * whoever meets a claim without its group (getGroupRequest, a retried createGroup, the sweep)
 * creates it from the claim.
 *
 * Consistency: LOCAL_QUORUM for reads and writes, LOCAL_SERIAL for LWTs (the session defaults),
 * except where a query says otherwise.
 */
import type { QueryOptions } from "cassandra-driver";
import cassandra from "cassandra-driver";
import { applyMigrations } from "../../../../lib/cassandra/migrations.ts";
import type { CassandraOutbox } from "../../../../lib/cassandra/outbox.ts";
import { createCassandraOutbox } from "../../../../lib/cassandra/outbox.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import { consistencies } from "../../../../lib/cassandra/session.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type {
  ConnectionStore,
  ConversationCommit,
  GroupCreate,
  GroupCreateResult,
  GroupRequestRecord,
  PairCommit,
} from "../../domain/connection-store.ts";
import { StoreConflictError } from "../../domain/connection-store.ts";
import type {
  ConversationKind,
  ConversationRecord,
  MemberRecord,
  MemberRole,
  MembershipRecord,
  PairKey,
  PairRecord,
  UserRecord,
  ViewRecord,
} from "../../domain/model.ts";
import { compareIds, compareMembersByRole } from "../../domain/model.ts";
import type { CommitEffects } from "./commit-effects.ts";
import {
  applyCommitEffects,
  CommitEffectsBuilder,
  decodeCommitEffects,
  encodeCommitEffects,
} from "./commit-effects.ts";
import { CONNECTION_CASSANDRA_MIGRATIONS, CONNECTION_OUTBOX_TABLE } from "./migrations.ts";

const { Long } = cassandra.types;
type Row = cassandra.types.Row;

/** Where a test makes the writer "die": the hook throws and the commit stops there. */
export type CommitCrashPoint =
  /** The intent is written, the LWT not yet. */
  | "before-owner-write"
  /** A group request id is claimed, its group not yet created. */
  | "after-claim"
  /** The LWT decided the change, none of its effects is written. */
  | "after-owner-write"
  /** The effects did not fit one batch and only the first batches are written. */
  | "between-effect-batches";

export interface CassandraConnectionStoreOptions {
  /** A client bound to the service's keyspace (lib/cassandra/session.ts); the caller closes it. */
  readonly client: CassandraClient;
  readonly logger: Logger;
  /** The sweep that rolls forward commits whose writer died before finishing them (see the header). */
  readonly recovery?: {
    /** How often the sweep runs; default 30 s; 0 = never by itself (recoverPendingCommits still works). */
    readonly intervalMs?: number;
    /** Intents younger than this may belong to commits still under way; default 60 s. */
    readonly graceMs?: number;
    /**
     * How far back the first sweep of a process looks, for commits whose writer died while no
     * other process was sweeping; default 6 h (intents live 3 days).
     */
    readonly lookbackMs?: number;
  };
  /** Tests only: called at each step of a commit; throwing simulates the process dying there. */
  readonly crashAt?: (point: CommitCrashPoint) => void | Promise<void>;
}

export interface CassandraConnectionStore extends ConnectionStore {
  readonly outbox: CassandraOutbox;
  /**
   * Rolls forward the commits whose intents are left in minutes older than the grace period (as
   * of `now`), and returns how many were outstanding. The periodic sweep calls this.
   */
  recoverPendingCommits(now?: number): Promise<number>;
}

const PAIRS = "connection_pairs";
const CONVERSATIONS = "connection_conversations";
const REQUESTS = "connection_group_requests";
const INTENTS = "connection_commit_intents";

const BUCKET_MS = 60_000;
const INTENT_SHARDS = 8;
/** Rounds of read-and-LWT one commit tries before reporting a conflict to the domain. */
const COMMIT_ATTEMPTS = 5;
/** Point reads issued at once when a call needs many partitions. */
const READ_CONCURRENCY = 32;
/** Ids per IN list on one partition's clustering key. */
const IN_CHUNK = 500;
const KINDS: readonly ConversationKind[] = ["direct", "group"];
const ROLES: readonly MemberRole[] = ["owner", "admin", "member"];

/** Where a commit's markers live and how its intent names it. */
type OwnerRef =
  | { readonly kind: "pair"; readonly pair: PairKey }
  | { readonly kind: "conversation"; readonly conversationId: string }
  | { readonly kind: "request"; readonly userId: string; readonly requestId: string };

interface CommitMarks {
  readonly commitTs: number | undefined;
  readonly appliedTs: number | undefined;
}

interface Intent {
  readonly bucket: number;
  readonly shard: number;
  readonly owner: string;
  readonly commitTs: number;
}

const CONVERSATION_STATICS =
  "kind, name, owner_user_id, direct_low_user_id, direct_high_user_id, membership_version, member_count, created_at, updated_at, deleted, commit_ts, applied_ts";
const PAIR_COLUMNS =
  "version, low_state, low_created_at, low_updated_at, high_state, high_created_at, high_updated_at, commit_ts, applied_ts";

export async function createCassandraConnectionStore(
  options: CassandraConnectionStoreOptions,
): Promise<CassandraConnectionStore> {
  const { client } = options;
  const logger = options.logger.child({ component: "connection-cassandra-store" });
  await applyMigrations(client, "connection", CONNECTION_CASSANDRA_MIGRATIONS, logger);
  const outbox = createCassandraOutbox(client, CONNECTION_OUTBOX_TABLE);
  const crash = async (point: CommitCrashPoint) => {
    await options.crashAt?.(point);
  };

  const execute = (query: string, params: unknown[], queryOptions: QueryOptions = {}) =>
    client.execute(query, params, queryOptions);

  // ---- commit markers, intents and rolling forward -------------------------------------------

  const intentFor = (owner: OwnerRef, commitTs: number): Intent => {
    const key = ownerKey(owner);
    return {
      bucket: Math.floor(commitTs / 1000 / BUCKET_MS),
      shard: shardOf(key),
      owner: key,
      commitTs,
    };
  };
  const intentDelete = (intent: Intent) => ({
    query: `DELETE FROM ${INTENTS} WHERE bucket = ? AND shard = ? AND owner = ? AND commit_ts = ?`,
    params: [Long.fromNumber(intent.bucket), intent.shard, intent.owner, Long.fromNumber(intent.commitTs)],
  });
  const writeIntent = (intent: Intent) =>
    execute(`INSERT INTO ${INTENTS} (bucket, shard, owner, commit_ts) VALUES (?, ?, ?, ?)`, [
      Long.fromNumber(intent.bucket),
      intent.shard,
      intent.owner,
      Long.fromNumber(intent.commitTs),
    ]);
  /** An intent whose LWT did not apply: nothing to recover (the sweep would find that too). */
  const dropIntent = async (intent: Intent) => {
    const statement = intentDelete(intent);
    await execute(statement.query, statement.params).catch((err: unknown) =>
      logger.warn({ err, owner: intent.owner }, "could not delete a commit intent; the sweep will"),
    );
  };

  const applyEffects = (effects: CommitEffects) =>
    applyCommitEffects(client, effects, { beforeLaterBatch: () => crash("between-effect-batches") });

  /**
   * Replays the owner's outstanding commit, if any; true when there was one. `consistency`:
   * the sweep reads at LOCAL_SERIAL, which first completes an LWT left half-way by a dead writer,
   * so it cannot take such a commit for absent and drop its intent.
   */
  const rollForward = async (
    owner: Exclude<OwnerRef, { kind: "request" }>,
    consistency: number = consistencies.localQuorum,
  ): Promise<boolean> => {
    const result =
      owner.kind === "pair"
        ? await execute(
            `SELECT commit_ts, applied_ts, pending FROM ${PAIRS} WHERE low_user_id = ? AND high_user_id = ?`,
            [owner.pair.low, owner.pair.high],
            { consistency },
          )
        : await execute(
            `SELECT commit_ts, applied_ts, pending FROM ${CONVERSATIONS} WHERE conversation_id = ? LIMIT 1`,
            [owner.conversationId],
            { consistency },
          );
    const row = result.first();
    if (row === null || !isOutstanding(marksOf(row))) return false;
    const pending = row.get("pending") as Buffer | null;
    if (pending === null) throw new Error(`outstanding commit of ${ownerKey(owner)} has no stored effects`);
    await applyEffects(decodeCommitEffects(pending));
    logger.info({ owner: ownerKey(owner) }, "rolled forward an outstanding commit");
    return true;
  };

  // ---- pairs ---------------------------------------------------------------------------------

  interface PairState {
    readonly record: PairRecord;
    readonly marks: CommitMarks;
  }

  const readPair = async (pair: PairKey): Promise<PairState | undefined> => {
    const row = (
      await execute(`SELECT ${PAIR_COLUMNS} FROM ${PAIRS} WHERE low_user_id = ? AND high_user_id = ?`, [
        pair.low,
        pair.high,
      ])
    ).first();
    if (row === null) return undefined;
    return {
      record: {
        pair,
        version: Number(row.get("version")),
        lowView: pairView(row, "low", pair.low, pair.high),
        highView: pairView(row, "high", pair.high, pair.low),
      },
      marks: marksOf(row),
    };
  };

  const pairEffects = (commit: PairCommit, before: PairRecord | undefined, ts: number, intent: Intent) => {
    const effects = new CommitEffectsBuilder();
    const at = Long.fromNumber(ts);
    const deleteAt = Long.fromNumber(ts - 1);
    const { pair } = commit;
    const side = (
      userId: string,
      otherId: string,
      was: ViewRecord | undefined,
      next: ViewRecord | undefined,
    ) => {
      const views = `views:${userId}`;
      const byState = `views_by_state:${userId}`;
      const towards = `views_towards:${otherId}`;
      if (next === undefined) {
        if (was === undefined) return;
        effects.add(
          views,
          "DELETE FROM connection_views USING TIMESTAMP ? WHERE user_id = ? AND other_user_id = ?",
          [deleteAt, userId, otherId],
        );
        effects.add(
          byState,
          "DELETE FROM connection_views_by_state USING TIMESTAMP ? WHERE user_id = ? AND state = ? AND other_user_id = ?",
          [deleteAt, userId, was.state, otherId],
        );
        effects.add(
          towards,
          "DELETE FROM connection_views_towards USING TIMESTAMP ? WHERE other_user_id = ? AND user_id = ?",
          [deleteAt, otherId, userId],
        );
        return;
      }
      effects.add(
        views,
        "INSERT INTO connection_views (user_id, other_user_id, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
        [userId, otherId, next.state, next.createdAt, next.updatedAt, at],
      );
      if (was !== undefined && was.state !== next.state) {
        effects.add(
          byState,
          "DELETE FROM connection_views_by_state USING TIMESTAMP ? WHERE user_id = ? AND state = ? AND other_user_id = ?",
          [deleteAt, userId, was.state, otherId],
        );
      }
      effects.add(
        byState,
        "INSERT INTO connection_views_by_state (user_id, state, other_user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
        [userId, next.state, otherId, next.createdAt, next.updatedAt, at],
      );
      effects.add(
        towards,
        "INSERT INTO connection_views_towards (other_user_id, user_id, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
        [otherId, userId, next.state, next.createdAt, next.updatedAt, at],
      );
    };
    side(pair.low, pair.high, before?.lowView, commit.lowView);
    side(pair.high, pair.low, before?.highView, commit.highView);

    if (commit.direct !== undefined) {
      const { conversation: c, members } = commit.direct;
      const id = c.conversationId;
      const users = c.directUsers ?? pair;
      effects.add(
        `conversation:${id}`,
        `UPDATE ${CONVERSATIONS} USING TIMESTAMP ? SET kind = ?, name = ?, owner_user_id = ?, direct_low_user_id = ?,
           direct_high_user_id = ?, membership_version = ?, member_count = ?, created_at = ?, updated_at = ?, deleted = ?
         WHERE conversation_id = ?`,
        [
          at,
          c.kind,
          c.name,
          c.ownerUserId,
          users.low,
          users.high,
          c.membershipVersion,
          c.memberCount,
          c.createdAt,
          c.updatedAt,
          c.deleted,
          id,
        ],
      );
      // A direct conversation's members are at most its two users: each is written or removed.
      const byUser = new Map(members.map((m) => [m.userId, m]));
      for (const userId of new Set([users.low, users.high, ...byUser.keys()])) {
        const member = byUser.get(userId);
        if (member === undefined) {
          removeMember(effects, id, "direct", userId, deleteAt);
        } else {
          writeMember(effects, "direct", member, at);
        }
      }
    }
    for (const event of commit.events) effects.addStatement("outbox", outbox.appendStatement(event));
    return effects.build([
      {
        query: `UPDATE ${PAIRS} USING TIMESTAMP ? SET applied_ts = ? WHERE low_user_id = ? AND high_user_id = ?`,
        params: [at, at, pair.low, pair.high],
      },
      intentDelete(intent),
    ]);
  };

  // ---- conversations -------------------------------------------------------------------------

  interface ConversationState {
    readonly record: ConversationRecord;
    readonly marks: CommitMarks;
  }

  const readConversation = async (conversationId: string): Promise<ConversationState | undefined> => {
    const row = (
      await execute(
        `SELECT ${CONVERSATION_STATICS} FROM ${CONVERSATIONS} WHERE conversation_id = ? LIMIT 1`,
        [conversationId],
      )
    ).first();
    if (row === null || row.get("kind") === null) return undefined;
    return { record: toConversation(conversationId, row), marks: marksOf(row) };
  };

  /** The conversation with its outstanding commit, if any, rolled forward first. */
  const currentConversation = async (conversationId: string): Promise<ConversationRecord | undefined> => {
    const state = await readConversation(conversationId);
    if (state === undefined || !isOutstanding(state.marks)) return state?.record;
    await rollForward({ kind: "conversation", conversationId });
    return (await readConversation(conversationId))?.record;
  };

  /** Reads member rows of one partition, rolling an outstanding commit forward first. */
  const readMembers = async <T>(
    conversationId: string,
    read: () => Promise<{ readonly marks: CommitMarks | undefined; readonly value: T }>,
  ): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      const { marks, value } = await read();
      if (marks === undefined || !isOutstanding(marks) || attempt >= COMMIT_ATTEMPTS) return value;
      await rollForward({ kind: "conversation", conversationId });
    }
  };

  const writeMember = (
    effects: CommitEffectsBuilder,
    kind: ConversationKind,
    m: MemberRecord,
    at: cassandra.types.Long,
  ) => {
    effects.add(
      `conversation:${m.conversationId}`,
      `INSERT INTO ${CONVERSATIONS} (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?`,
      [m.conversationId, m.userId, m.role, m.joinedAt, at],
    );
    effects.add(
      `memberships:${m.userId}`,
      "INSERT INTO connection_memberships (user_id, kind, conversation_id, role, joined_at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
      [m.userId, kind, m.conversationId, m.role, m.joinedAt, at],
    );
  };
  const removeMember = (
    effects: CommitEffectsBuilder,
    conversationId: string,
    kind: ConversationKind,
    userId: string,
    deleteAt: cassandra.types.Long,
  ) => {
    effects.add(
      `conversation:${conversationId}`,
      `DELETE FROM ${CONVERSATIONS} USING TIMESTAMP ? WHERE conversation_id = ? AND user_id = ?`,
      [deleteAt, conversationId, userId],
    );
    effects.add(
      `memberships:${userId}`,
      "DELETE FROM connection_memberships USING TIMESTAMP ? WHERE user_id = ? AND kind = ? AND conversation_id = ?",
      [deleteAt, userId, kind, conversationId],
    );
  };

  const groupEffects = (
    conversationId: string,
    change: {
      readonly upsertMembers: readonly MemberRecord[];
      readonly removeMemberIds: readonly string[];
      readonly events: GroupCreate["events"];
    },
    ts: number,
    intent: Intent,
  ) => {
    const effects = new CommitEffectsBuilder();
    const at = Long.fromNumber(ts);
    const deleteAt = Long.fromNumber(ts - 1);
    for (const userId of change.removeMemberIds)
      removeMember(effects, conversationId, "group", userId, deleteAt);
    for (const member of change.upsertMembers) writeMember(effects, "group", member, at);
    for (const event of change.events) effects.addStatement("outbox", outbox.appendStatement(event));
    return effects.build([
      {
        query: `UPDATE ${CONVERSATIONS} USING TIMESTAMP ? SET applied_ts = ? WHERE conversation_id = ?`,
        params: [at, at, conversationId],
      },
      intentDelete(intent),
    ]);
  };

  /** The LWT that creates a group's owner row with its pending creation; false if the id is taken. */
  const insertGroup = async (c: ConversationRecord, ts: number, pending: Buffer): Promise<boolean> => {
    const result = await execute(
      `INSERT INTO ${CONVERSATIONS} (conversation_id, kind, name, owner_user_id, membership_version, member_count,
         created_at, updated_at, deleted, commit_ts, pending)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS`,
      [
        c.conversationId,
        c.kind,
        c.name,
        c.ownerUserId,
        c.membershipVersion,
        c.memberCount,
        c.createdAt,
        c.updatedAt,
        c.deleted,
        Long.fromNumber(ts),
        pending,
      ],
    );
    return result.wasApplied();
  };

  /**
   * Makes sure a claimed request's group exists with its effects applied: creates it from the
   * claim when its writer died between the claim and the group's creation.
   */
  const completeClaim = async (claim: Row): Promise<void> => {
    const conversationId = String(claim.get("conversation_id"));
    const existing = await readConversation(conversationId);
    if (existing !== undefined) {
      if (isOutstanding(existing.marks)) await rollForward({ kind: "conversation", conversationId });
      return;
    }
    const pending = claim.get("pending") as Buffer | null;
    const stored = claim.get("conversation") as string | null;
    const commitTs = claim.get("commit_ts") as cassandra.types.Long | null;
    if (pending === null || stored === null || commitTs === null) {
      throw new Error(`group request claim for ${conversationId} lacks its creation`);
    }
    if (await insertGroup(parseConversation(stored), commitTs.toNumber(), pending)) {
      await applyEffects(decodeCommitEffects(pending));
      logger.info({ conversationId }, "created a claimed group whose writer died");
    } else {
      await rollForward({ kind: "conversation", conversationId });
    }
  };

  const readClaim = async (userId: string, requestId: string, consistency?: number) =>
    (
      await execute(
        `SELECT user_id, request_id, conversation_id, fingerprint, conversation, commit_ts, pending FROM ${REQUESTS}
         WHERE user_id = ? AND request_id = ?`,
        [userId, requestId],
        consistency === undefined ? {} : { consistency },
      )
    ).first();

  // ---- recovery sweep ------------------------------------------------------------------------

  const graceMs = options.recovery?.graceMs ?? 60_000;
  const intervalMs = options.recovery?.intervalMs ?? 30_000;
  let sweepFrom = Math.floor((Date.now() - (options.recovery?.lookbackMs ?? 6 * 3_600_000)) / BUCKET_MS);

  const recoverOwner = async (owner: OwnerRef): Promise<boolean> => {
    if (owner.kind !== "request") return rollForward(owner, consistencies.localSerial);
    // LOCAL_SERIAL: completes a claim LWT left half-way rather than taking it for absent.
    const claim = await readClaim(owner.userId, owner.requestId, consistencies.localSerial);
    if (claim === null) return false;
    const before = await readConversation(String(claim.get("conversation_id")));
    await completeClaim(claim);
    return before === undefined || isOutstanding(before.marks);
  };

  const recoverPendingCommits = async (now = Date.now()): Promise<number> => {
    const lastBucket = Math.floor((now - graceMs) / BUCKET_MS) - 1;
    let recovered = 0;
    for (let bucket = sweepFrom; bucket <= lastBucket; bucket++) {
      let complete = true;
      const shards = await Promise.all(
        Array.from({ length: INTENT_SHARDS }, (_, shard) =>
          execute(`SELECT shard, owner, commit_ts FROM ${INTENTS} WHERE bucket = ? AND shard = ?`, [
            Long.fromNumber(bucket),
            shard,
          ]),
        ),
      );
      for (const result of shards) {
        for (const row of result.rows) {
          const owner = String(row.get("owner"));
          try {
            if (await recoverOwner(parseOwnerKey(owner))) recovered++;
            const statement = intentDelete({
              bucket,
              shard: Number(row.get("shard")),
              owner,
              commitTs: (row.get("commit_ts") as cassandra.types.Long).toNumber(),
            });
            await execute(statement.query, statement.params);
          } catch (err) {
            complete = false;
            logger.warn(
              { err, owner },
              "could not roll forward an outstanding commit; retrying at the next sweep",
            );
          }
        }
      }
      if (complete && bucket === sweepFrom) sweepFrom = bucket + 1;
    }
    return recovered;
  };

  let sweeping: Promise<unknown> | undefined;
  const timer =
    intervalMs <= 0
      ? undefined
      : setInterval(() => {
          if (sweeping !== undefined) return;
          sweeping = recoverPendingCommits()
            .catch((err: unknown) => logger.warn({ err }, "commit recovery sweep failed"))
            .finally(() => {
              sweeping = undefined;
            });
        }, intervalMs);
  timer?.unref();

  // ---- the port ------------------------------------------------------------------------------

  const store: CassandraConnectionStore = {
    outbox,
    recoverPendingCommits,

    async getUsers(userIds) {
      const rows = await mapConcurrent([...new Set(userIds)], async (userId) =>
        (
          await execute(
            "SELECT user_id, display_name, avatar_url, profile_updated_at, created_at FROM connection_users WHERE user_id = ?",
            [userId],
          )
        ).first(),
      );
      const users = new Map<string, UserRecord>();
      for (const row of rows) if (row !== null) users.set(String(row.get("user_id")), toUser(row));
      return users;
    },

    async registerUser(userId, at) {
      const known = (
        await execute("SELECT user_id FROM connection_users WHERE user_id = ?", [userId])
      ).first();
      if (known !== null) return;
      // An LWT so that a concurrent first profile is never overwritten by this empty one.
      await execute(
        "INSERT INTO connection_users (user_id, display_name, avatar_url, created_at) VALUES (?, '', '', ?) IF NOT EXISTS",
        [userId, at],
      );
    },

    async upsertProfile(profile) {
      const created = await execute(
        `INSERT INTO connection_users (user_id, display_name, avatar_url, profile_updated_at, created_at)
         VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`,
        [profile.userId, profile.displayName, profile.avatarUrl, profile.at, profile.at],
      );
      let createdAt = profile.at;
      if (!created.wasApplied()) {
        createdAt = created.first()?.get("created_at") ?? profile.at;
        // Through Paxos too (the row is only ever written by LWTs), so it orders after the insert.
        await execute(
          "UPDATE connection_users SET display_name = ?, avatar_url = ?, profile_updated_at = ? WHERE user_id = ? IF EXISTS",
          [profile.displayName, profile.avatarUrl, profile.at, profile.userId],
        );
      }
      return {
        userId: profile.userId,
        displayName: profile.displayName,
        avatarUrl: profile.avatarUrl,
        profileUpdatedAt: profile.at,
        createdAt,
      };
    },

    async getPair(pair) {
      const state = await readPair(pair);
      if (state === undefined) return { pair, version: 0, lowView: undefined, highView: undefined };
      // The owner row already holds the views; the roll-forward is for what the commit derived.
      if (isOutstanding(state.marks)) await rollForward({ kind: "pair", pair });
      return state.record;
    },

    async commitPair(commit) {
      const { pair } = commit;
      const owner: OwnerRef = { kind: "pair", pair };
      for (let attempt = 0; attempt < COMMIT_ATTEMPTS; attempt++) {
        const state = await readPair(pair);
        if (state !== undefined && isOutstanding(state.marks)) {
          await rollForward(owner);
          continue;
        }
        if ((state?.record.version ?? 0) !== commit.expectedVersion) {
          throw new StoreConflictError(`pair ${pair.low}/${pair.high} changed`);
        }
        const ts = nextCommitTs(state?.marks.commitTs);
        const intent = intentFor(owner, ts);
        const effects = pairEffects(commit, state?.record, ts, intent);
        await writeIntent(intent);
        await crash("before-owner-write");
        const columns = [
          commit.version,
          ...viewColumns(commit.lowView),
          ...viewColumns(commit.highView),
          Long.fromNumber(ts),
          encodeCommitEffects(effects),
        ];
        const result =
          state === undefined
            ? await execute(
                `INSERT INTO ${PAIRS} (version, low_state, low_created_at, low_updated_at, high_state, high_created_at,
                   high_updated_at, commit_ts, pending, low_user_id, high_user_id)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS`,
                [...columns, pair.low, pair.high],
              )
            : await execute(
                `UPDATE ${PAIRS} SET version = ?, low_state = ?, low_created_at = ?, low_updated_at = ?, high_state = ?,
                   high_created_at = ?, high_updated_at = ?, commit_ts = ?, pending = ?
                 WHERE low_user_id = ? AND high_user_id = ?
                 IF version = ? AND commit_ts = ? AND applied_ts = ?`,
                [
                  ...columns,
                  pair.low,
                  pair.high,
                  commit.expectedVersion,
                  Long.fromNumber(state.marks.commitTs ?? 0),
                  Long.fromNumber(state.marks.appliedTs ?? 0),
                ],
              );
        if (!result.wasApplied()) {
          await dropIntent(intent);
          continue;
        }
        await crash("after-owner-write");
        await applyEffects(effects);
        return;
      }
      throw new StoreConflictError(`pair ${pair.low}/${pair.high} is contended`);
    },

    async listViews(userId, options) {
      const after = options.afterOtherUserId ?? "";
      const states =
        options.states !== undefined && options.states.length > 0 ? [...new Set(options.states)] : [];
      if (states.length === 0) {
        const rows = await execute(
          "SELECT user_id, other_user_id, state, created_at, updated_at FROM connection_views WHERE user_id = ? AND other_user_id > ? LIMIT ?",
          [userId, after, options.limit],
        );
        return rows.rows.map(toView);
      }
      // One slice per state, merged: each is in other-user order, so the first `limit` of the
      // merge are the first `limit` overall.
      const slices = await Promise.all(
        states.map((state) =>
          execute(
            `SELECT user_id, other_user_id, state, created_at, updated_at FROM connection_views_by_state
             WHERE user_id = ? AND state = ? AND other_user_id > ? LIMIT ?`,
            [userId, state, after, options.limit],
          ),
        ),
      );
      return slices
        .flatMap((slice) => slice.rows.map(toView))
        .sort((a, b) => compareIds(a.otherUserId, b.otherUserId))
        .slice(0, options.limit);
    },

    async getViews(userId, otherUserIds) {
      const views: ViewRecord[] = [];
      for (const ids of chunks([...new Set(otherUserIds)], IN_CHUNK)) {
        const rows = await execute(
          "SELECT user_id, other_user_id, state, created_at, updated_at FROM connection_views WHERE user_id = ? AND other_user_id IN ?",
          [userId, ids],
        );
        views.push(...rows.rows.map(toView));
      }
      return views;
    },

    async getViewsTowards(userIds, otherUserId) {
      const views: ViewRecord[] = [];
      for (const ids of chunks([...new Set(userIds)], IN_CHUNK)) {
        const rows = await execute(
          "SELECT user_id, other_user_id, state, created_at, updated_at FROM connection_views_towards WHERE other_user_id = ? AND user_id IN ?",
          [otherUserId, ids],
        );
        views.push(...rows.rows.map(toView));
      }
      return views;
    },

    async getConversation(conversationId) {
      return currentConversation(conversationId);
    },

    async getMembers(conversationId, userIds) {
      const ids = [...new Set(userIds)];
      if (ids.length === 0) return [];
      return readMembers(conversationId, async () => {
        const members: MemberRecord[] = [];
        let marks: CommitMarks | undefined;
        for (const chunk of chunks(ids, IN_CHUNK)) {
          const rows = await execute(
            `SELECT user_id, role, joined_at, commit_ts, applied_ts FROM ${CONVERSATIONS} WHERE conversation_id = ? AND user_id IN ?`,
            [conversationId, chunk],
          );
          for (const row of rows.rows) {
            marks ??= marksOf(row);
            members.push(toMember(conversationId, row));
          }
        }
        // No member row matched, so no static columns came back: read the markers alone.
        marks ??= (await readConversation(conversationId))?.marks;
        return { marks, value: members };
      });
    },

    async getAllMembers(conversationId) {
      return readMembers(conversationId, async () => {
        const { marks, members } = await readPartition(conversationId);
        return { marks, value: members };
      });
    },

    async listMembers(conversationId, options) {
      return readMembers(conversationId, async () => {
        // The whole partition (at most MAX_GROUP_MEMBERS rows) in one read: the page and the
        // version come from one isolated snapshot of it, which a role-ordered second table could
        // not give. Sorting 1,000 members in memory costs less than that read.
        const { marks, version, members } = await readPartition(conversationId);
        const after = options.after;
        const page = members
          .sort(compareMembersByRole)
          .filter((m) => after === undefined || compareMembersByRole(m, after) > 0)
          .slice(0, options.limit);
        return { marks, value: { membershipVersion: version, members: page } };
      });
    },

    async listMemberships(userId, options) {
      const kinds = options.kind === undefined ? KINDS : [options.kind];
      const found: MembershipRecord[] = [];
      let after = options.afterConversationId ?? "";
      while (found.length < options.limit) {
        const want = options.limit - found.length;
        const slices = await Promise.all(
          kinds.map((kind) =>
            execute(
              `SELECT conversation_id, role, joined_at FROM connection_memberships
               WHERE user_id = ? AND kind = ? AND conversation_id > ? LIMIT ?`,
              [userId, kind, after, want],
            ),
          ),
        );
        const rows = slices
          .flatMap((slice) => slice.rows)
          .sort((a, b) => compareIds(String(a.get("conversation_id")), String(b.get("conversation_id"))))
          .slice(0, want);
        const conversations = await mapConcurrent(rows, (row) =>
          currentConversation(String(row.get("conversation_id"))),
        );
        rows.forEach((row, index) => {
          const conversation = conversations[index];
          // A membership row outliving its conversation is a commit still being applied.
          if (conversation === undefined || conversation.deleted) return;
          found.push({
            conversation,
            member: {
              conversationId: conversation.conversationId,
              userId,
              role: toRole(row.get("role")),
              joinedAt: row.get("joined_at") as Date,
            },
          });
        });
        const last = rows.at(-1);
        if (last === undefined || rows.length < want) break;
        after = String(last.get("conversation_id"));
      }
      return found;
    },

    async shareConversation(userA, userB) {
      // Through A's conversations a page at a time, asking B's partition about each page.
      let pageState: string | undefined;
      do {
        const page = await execute(
          "SELECT kind, conversation_id FROM connection_memberships WHERE user_id = ?",
          [userA],
          { fetchSize: IN_CHUNK, ...(pageState === undefined ? {} : { pageState }) },
        );
        for (const kind of KINDS) {
          const ids = page.rows
            .filter((r) => r.get("kind") === kind)
            .map((r) => String(r.get("conversation_id")));
          if (ids.length === 0) continue;
          const shared = await execute(
            "SELECT conversation_id FROM connection_memberships WHERE user_id = ? AND kind = ? AND conversation_id IN ? LIMIT 1",
            [userB, kind, ids],
          );
          if (shared.rows.length > 0) return true;
        }
        pageState = page.pageState ?? undefined;
      } while (pageState !== undefined);
      return false;
    },

    async createGroup(commit: GroupCreate): Promise<GroupCreateResult> {
      const { conversation, request } = commit;
      const conversationId = conversation.conversationId;
      const owner: OwnerRef =
        request === undefined
          ? { kind: "conversation", conversationId }
          : { kind: "request", userId: request.userId, requestId: request.requestId };
      const ts = nextCommitTs(undefined);
      const intent = intentFor(owner, ts);
      const effects = groupEffects(
        conversationId,
        { upsertMembers: commit.members, removeMemberIds: [], events: commit.events },
        ts,
        intent,
      );
      const pending = encodeCommitEffects(effects);
      await writeIntent(intent);
      await crash("before-owner-write");
      if (request !== undefined) {
        const claim = await execute(
          `INSERT INTO ${REQUESTS} (user_id, request_id, conversation_id, fingerprint, created_at, conversation, commit_ts, pending)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS`,
          [
            request.userId,
            request.requestId,
            request.conversationId,
            request.fingerprint,
            conversation.createdAt,
            JSON.stringify(conversation),
            Long.fromNumber(ts),
            pending,
          ],
        );
        if (!claim.wasApplied()) {
          await dropIntent(intent);
          const existing = claim.first();
          if (existing === null) throw new Error("a refused claim came back without the claim it met");
          await completeClaim(existing);
          return { created: false, existing: toGroupRequest(existing) };
        }
        await crash("after-claim");
      }
      if (!(await insertGroup(conversation, ts, pending))) {
        if (request !== undefined) {
          // The claim must not point at someone else's group.
          await execute(
            `DELETE FROM ${REQUESTS} WHERE user_id = ? AND request_id = ? IF conversation_id = ? AND commit_ts = ?`,
            [request.userId, request.requestId, conversationId, Long.fromNumber(ts)],
          );
        }
        await dropIntent(intent);
        throw new StoreConflictError(`conversation ${conversationId} exists`);
      }
      await crash("after-owner-write");
      await applyEffects(effects);
      return { created: true };
    },

    async getGroupRequest(userId, requestId) {
      const claim = await readClaim(userId, requestId);
      if (claim === null) return undefined;
      await completeClaim(claim);
      return toGroupRequest(claim);
    },

    async commitConversation(commit: ConversationCommit) {
      const { conversation } = commit;
      const conversationId = conversation.conversationId;
      const owner: OwnerRef = { kind: "conversation", conversationId };
      for (let attempt = 0; attempt < COMMIT_ATTEMPTS; attempt++) {
        const state = await readConversation(conversationId);
        if (state === undefined)
          throw new StoreConflictError(`conversation ${conversationId} does not exist`);
        if (isOutstanding(state.marks)) {
          await rollForward(owner);
          continue;
        }
        if (state.record.membershipVersion !== commit.expectedVersion) {
          throw new StoreConflictError(`conversation ${conversationId} changed`);
        }
        if (state.record.kind !== "group") {
          // Its record belongs to the pair's commits (written without LWTs); see the header.
          throw new Error(`direct conversation ${conversationId} changes through its pair's commits`);
        }
        const ts = nextCommitTs(state.marks.commitTs);
        const intent = intentFor(owner, ts);
        const effects = groupEffects(conversationId, commit, ts, intent);
        await writeIntent(intent);
        await crash("before-owner-write");
        const result = await execute(
          `UPDATE ${CONVERSATIONS} SET name = ?, owner_user_id = ?, membership_version = ?, member_count = ?,
             created_at = ?, updated_at = ?, deleted = ?, commit_ts = ?, pending = ?
           WHERE conversation_id = ?
           IF membership_version = ? AND commit_ts = ? AND applied_ts = ?`,
          [
            conversation.name,
            conversation.ownerUserId,
            conversation.membershipVersion,
            conversation.memberCount,
            conversation.createdAt,
            conversation.updatedAt,
            conversation.deleted,
            Long.fromNumber(ts),
            encodeCommitEffects(effects),
            conversationId,
            commit.expectedVersion,
            Long.fromNumber(state.marks.commitTs ?? 0),
            Long.fromNumber(state.marks.appliedTs ?? 0),
          ],
        );
        if (!result.wasApplied()) {
          await dropIntent(intent);
          continue;
        }
        await crash("after-owner-write");
        await applyEffects(effects);
        return;
      }
      throw new StoreConflictError(`conversation ${conversationId} is contended`);
    },

    async close() {
      if (timer !== undefined) clearInterval(timer);
      await sweeping;
    },
  };

  /** Every member row of a conversation and its static columns, from one single-partition read. */
  async function readPartition(conversationId: string) {
    const result = await execute(
      `SELECT user_id, role, joined_at, membership_version, commit_ts, applied_ts FROM ${CONVERSATIONS} WHERE conversation_id = ?`,
      [conversationId],
      // The partition is bounded (MAX_GROUP_MEMBERS rows), so one page holds it whole.
      { fetchSize: 5_000 },
    );
    if (result.pageState !== null && result.pageState !== undefined) {
      throw new Error(`conversation ${conversationId} has more member rows than one page`);
    }
    const first = result.first();
    const members = result.rows
      .filter((row) => row.get("user_id") !== null)
      .map((row) => toMember(conversationId, row));
    return {
      marks: first === null ? undefined : marksOf(first),
      version: first === null ? 0 : Number(first.get("membership_version") ?? 0),
      members,
    };
  }

  return store;
}

/**
 * A commit timestamp (microseconds) after the owner's previous one by at least 2, so the new
 * commit's deletes (at ts - 1) still win over the previous commit's writes.
 */
function nextCommitTs(previous: number | undefined): number {
  return Math.max(Date.now() * 1000, (previous ?? 0) + 2);
}

function isOutstanding(marks: CommitMarks): boolean {
  return marks.commitTs !== undefined && (marks.appliedTs === undefined || marks.appliedTs < marks.commitTs);
}

function marksOf(row: Row): CommitMarks {
  const commitTs = row.get("commit_ts") as cassandra.types.Long | null;
  const appliedTs = row.get("applied_ts") as cassandra.types.Long | null;
  return {
    commitTs: commitTs === null ? undefined : commitTs.toNumber(),
    appliedTs: appliedTs === null ? undefined : appliedTs.toNumber(),
  };
}

function ownerKey(owner: OwnerRef): string {
  switch (owner.kind) {
    case "pair":
      return JSON.stringify(["pair", owner.pair.low, owner.pair.high]);
    case "conversation":
      return JSON.stringify(["conversation", owner.conversationId]);
    case "request":
      return JSON.stringify(["request", owner.userId, owner.requestId]);
  }
}

function parseOwnerKey(key: string): OwnerRef {
  const [kind, a, b] = JSON.parse(key) as [string, string, string | undefined];
  if (kind === "pair" && b !== undefined) return { kind, pair: { low: a, high: b } };
  if (kind === "conversation") return { kind, conversationId: a };
  if (kind === "request" && b !== undefined) return { kind, userId: a, requestId: b };
  throw new Error(`unknown commit intent owner ${key}`);
}

/** Spreads intents of one minute over a few partitions (FNV-1a of the owner). */
function shardOf(key: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % INTENT_SHARDS;
}

function viewColumns(view: ViewRecord | undefined): unknown[] {
  return view === undefined ? [null, null, null] : [view.state, view.createdAt, view.updatedAt];
}

function pairView(
  row: Row,
  side: "low" | "high",
  userId: string,
  otherUserId: string,
): ViewRecord | undefined {
  const state = row.get(`${side}_state`) as ViewRecord["state"] | null;
  if (state === null) return undefined;
  return {
    userId,
    otherUserId,
    state,
    createdAt: row.get(`${side}_created_at`) as Date,
    updatedAt: row.get(`${side}_updated_at`) as Date,
  };
}

function toView(row: Row): ViewRecord {
  return {
    userId: String(row.get("user_id")),
    otherUserId: String(row.get("other_user_id")),
    state: String(row.get("state")) as ViewRecord["state"],
    createdAt: row.get("created_at") as Date,
    updatedAt: row.get("updated_at") as Date,
  };
}

function toUser(row: Row): UserRecord {
  return {
    userId: String(row.get("user_id")),
    displayName: String(row.get("display_name") ?? ""),
    avatarUrl: String(row.get("avatar_url") ?? ""),
    profileUpdatedAt: (row.get("profile_updated_at") as Date | null) ?? undefined,
    createdAt: row.get("created_at") as Date,
  };
}

function toConversation(conversationId: string, row: Row): ConversationRecord {
  const low = row.get("direct_low_user_id") as string | null;
  const high = row.get("direct_high_user_id") as string | null;
  return {
    conversationId,
    kind: String(row.get("kind")) as ConversationKind,
    name: String(row.get("name") ?? ""),
    ownerUserId: String(row.get("owner_user_id") ?? ""),
    directUsers: low === null || high === null ? undefined : { low, high },
    membershipVersion: Number(row.get("membership_version")),
    memberCount: Number(row.get("member_count")),
    createdAt: row.get("created_at") as Date,
    updatedAt: row.get("updated_at") as Date,
    deleted: row.get("deleted") === true,
  };
}

/** A ConversationRecord as the claim stores it (JSON, dates as ISO strings). */
function parseConversation(stored: string): ConversationRecord {
  const parsed = JSON.parse(stored) as Omit<ConversationRecord, "createdAt" | "updatedAt"> & {
    createdAt: string;
    updatedAt: string;
  };
  return { ...parsed, createdAt: new Date(parsed.createdAt), updatedAt: new Date(parsed.updatedAt) };
}

function toMember(conversationId: string, row: Row): MemberRecord {
  return {
    conversationId,
    userId: String(row.get("user_id")),
    role: toRole(row.get("role")),
    joinedAt: row.get("joined_at") as Date,
  };
}

function toRole(value: unknown): MemberRole {
  const role = ROLES.find((r) => r === value);
  if (role === undefined) throw new Error(`unknown member role ${String(value)}`);
  return role;
}

function toGroupRequest(row: Row): GroupRequestRecord {
  return {
    userId: String(row.get("user_id")),
    requestId: String(row.get("request_id")),
    conversationId: String(row.get("conversation_id")),
    fingerprint: String(row.get("fingerprint")),
  };
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** `work` over every item, at most READ_CONCURRENCY at a time, results in item order. */
async function mapConcurrent<T, R>(items: readonly T[], work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, items.length) }, worker));
  return results;
}
