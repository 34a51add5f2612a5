import type { DatabaseSync, SQLInputValue, StatementSync } from "node:sqlite";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import { createSqliteOutbox } from "../../../../lib/outbox.ts";
import { inTransaction, migrate, openSqlite } from "../../../../lib/sqlite.ts";
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
import { ROLE_RANK } from "../../domain/model.ts";
import { CONNECTION_MIGRATIONS } from "./migrations.ts";

/** The outbox table of the connection service in the shared SQLite file. */
export const CONNECTION_OUTBOX_TABLE = "connection_outbox";

export type SqliteConnectionStoreOptions =
  /** Opens (and on close, closes) the SQLite file at `path` (":memory:" for tests). */
  | { readonly path: string }
  /** Uses an open database; `close()` leaves it open. */
  | { readonly db: DatabaseSync };

type Row = Record<string, unknown>;

const ROLE_BY_RANK: readonly MemberRole[] = ["owner", "admin", "member"];

/**
 * The embedded adapter of ConnectionStore on node:sqlite. Every commit is one `BEGIN IMMEDIATE`
 * transaction that checks the version it was based on, writes the change and appends the encoded
 * events to the `connection_outbox` table, so an event is stored exactly when its change is.
 * Reads that must be one snapshot (a page of members with its version) run in one read
 * transaction. Id lists are passed as one JSON array (`json_each`), so a 1,000-member check is
 * one indexed query.
 */
export function createSqliteConnectionStore(options: SqliteConnectionStoreOptions): ConnectionStore {
  const ownsDb = "path" in options;
  const db = "path" in options ? openSqlite(options.path) : options.db;
  migrate(db, "connection", CONNECTION_MIGRATIONS);
  const outbox = createSqliteOutbox(db, CONNECTION_OUTBOX_TABLE);

  const cache = new Map<string, StatementSync>();
  const sql = (text: string): StatementSync => {
    let statement = cache.get(text);
    if (statement === undefined) {
      statement = db.prepare(text);
      cache.set(text, statement);
    }
    return statement;
  };
  const ids = (values: readonly string[]) => JSON.stringify(values);
  const appendEvents = (events: readonly OutboxEvent[]) => {
    for (const event of events) outbox.append(event);
  };

  const readTransaction = <T>(work: () => T): T => {
    db.exec("BEGIN");
    try {
      const result = work();
      db.exec("COMMIT");
      return result;
    } catch (err) {
      db.exec("ROLLBACK");
      throw err;
    }
  };

  const writeView = (user: string, other: string, view: ViewRecord | undefined) => {
    if (view === undefined) {
      sql("DELETE FROM connection_views WHERE user_id = ? AND other_user_id = ?").run(user, other);
      return;
    }
    sql(
      `INSERT INTO connection_views (user_id, other_user_id, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (user_id, other_user_id) DO UPDATE SET state = excluded.state, created_at = excluded.created_at,
       updated_at = excluded.updated_at`,
    ).run(user, other, view.state, view.createdAt.getTime(), view.updatedAt.getTime());
  };

  const writeConversation = (c: ConversationRecord) => {
    sql(
      `INSERT INTO connection_conversations (conversation_id, kind, name, owner_user_id, direct_low_user_id,
         direct_high_user_id, membership_version, member_count, created_at, updated_at, deleted)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (conversation_id) DO UPDATE SET name = excluded.name, owner_user_id = excluded.owner_user_id,
         membership_version = excluded.membership_version, member_count = excluded.member_count,
         created_at = excluded.created_at, updated_at = excluded.updated_at, deleted = excluded.deleted`,
    ).run(
      c.conversationId,
      c.kind,
      c.name,
      c.ownerUserId,
      c.directUsers?.low ?? null,
      c.directUsers?.high ?? null,
      c.membershipVersion,
      c.memberCount,
      c.createdAt.getTime(),
      c.updatedAt.getTime(),
      c.deleted ? 1 : 0,
    );
  };

  const writeMember = (m: MemberRecord) => {
    sql(
      `INSERT INTO connection_members (conversation_id, user_id, role_rank, joined_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (conversation_id, user_id) DO UPDATE SET role_rank = excluded.role_rank, joined_at = excluded.joined_at`,
    ).run(m.conversationId, m.userId, ROLE_RANK[m.role], m.joinedAt.getTime());
  };

  const pairVersion = (pair: PairKey): number => {
    const row = sql("SELECT version FROM connection_pairs WHERE low_user_id = ? AND high_user_id = ?").get(
      pair.low,
      pair.high,
    ) as Row | undefined;
    return row === undefined ? 0 : Number(row.version);
  };

  const store: ConnectionStore = {
    outbox,

    async getUsers(userIds) {
      const rows = sql(
        "SELECT * FROM connection_users WHERE user_id IN (SELECT value FROM json_each(?))",
      ).all(ids(userIds)) as Row[];
      return new Map(rows.map((row) => [String(row.user_id), toUser(row)]));
    },

    async registerUser(userId, at) {
      sql(
        `INSERT INTO connection_users (user_id, display_name, avatar_url, profile_updated_at, created_at)
         VALUES (?, '', '', NULL, ?) ON CONFLICT (user_id) DO NOTHING`,
      ).run(userId, at.getTime());
    },

    async upsertProfile(profile) {
      const row = sql(
        `INSERT INTO connection_users (user_id, display_name, avatar_url, profile_updated_at, created_at)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, avatar_url = excluded.avatar_url,
           profile_updated_at = excluded.profile_updated_at
         RETURNING *`,
      ).get(
        profile.userId,
        profile.displayName,
        profile.avatarUrl,
        profile.at.getTime(),
        profile.at.getTime(),
      ) as Row;
      return toUser(row);
    },

    async getPair(pair) {
      return readTransaction((): PairRecord => {
        const views = sql(
          `SELECT * FROM connection_views WHERE (user_id = ? AND other_user_id = ?) OR (user_id = ? AND other_user_id = ?)`,
        ).all(pair.low, pair.high, pair.high, pair.low) as Row[];
        const records = views.map(toView);
        return {
          pair,
          version: pairVersion(pair),
          lowView: records.find((v) => v.userId === pair.low && v.otherUserId === pair.high),
          highView: records.find((v) => v.userId === pair.high && v.otherUserId === pair.low),
        };
      });
    },

    async commitPair(commit: PairCommit) {
      const { pair } = commit;
      inTransaction(db, () => {
        if (pairVersion(pair) !== commit.expectedVersion) {
          throw new StoreConflictError(`pair ${pair.low}/${pair.high} changed`);
        }
        sql(
          `INSERT INTO connection_pairs (low_user_id, high_user_id, version) VALUES (?, ?, ?)
           ON CONFLICT (low_user_id, high_user_id) DO UPDATE SET version = excluded.version`,
        ).run(pair.low, pair.high, commit.version);
        writeView(pair.low, pair.high, commit.lowView);
        writeView(pair.high, pair.low, commit.highView);
        if (commit.direct !== undefined) {
          const { conversation, members } = commit.direct;
          writeConversation(conversation);
          sql("DELETE FROM connection_members WHERE conversation_id = ?").run(conversation.conversationId);
          for (const member of members) writeMember(member);
        }
        appendEvents(commit.events);
      });
    },

    async listViews(userId, options) {
      const params: SQLInputValue[] = [userId, options.afterOtherUserId ?? ""];
      let stateClause = "";
      if (options.states !== undefined && options.states.length > 0) {
        stateClause = "AND state IN (SELECT value FROM json_each(?))";
        params.push(JSON.stringify(options.states));
      }
      params.push(options.limit);
      const rows = sql(
        `SELECT * FROM connection_views WHERE user_id = ? AND other_user_id > ? ${stateClause}
         ORDER BY other_user_id LIMIT ?`,
      ).all(...params) as Row[];
      return rows.map(toView);
    },

    async getViews(userId, otherUserIds) {
      const rows = sql(
        "SELECT * FROM connection_views WHERE user_id = ? AND other_user_id IN (SELECT value FROM json_each(?))",
      ).all(userId, ids(otherUserIds)) as Row[];
      return rows.map(toView);
    },

    async getViewsTowards(userIds, otherUserId) {
      const rows = sql(
        "SELECT * FROM connection_views WHERE other_user_id = ? AND user_id IN (SELECT value FROM json_each(?))",
      ).all(otherUserId, ids(userIds)) as Row[];
      return rows.map(toView);
    },

    async getConversation(conversationId) {
      const row = sql("SELECT * FROM connection_conversations WHERE conversation_id = ?").get(
        conversationId,
      ) as Row | undefined;
      return row === undefined ? undefined : toConversation(row);
    },

    async getMembers(conversationId, userIds) {
      const rows = sql(
        "SELECT * FROM connection_members WHERE conversation_id = ? AND user_id IN (SELECT value FROM json_each(?))",
      ).all(conversationId, ids(userIds)) as Row[];
      return rows.map(toMember);
    },

    async getAllMembers(conversationId) {
      const rows = sql("SELECT * FROM connection_members WHERE conversation_id = ? ORDER BY user_id").all(
        conversationId,
      ) as Row[];
      return rows.map(toMember);
    },

    async listMembers(conversationId, options) {
      return readTransaction(() => {
        const conversation = sql(
          "SELECT membership_version FROM connection_conversations WHERE conversation_id = ?",
        ).get(conversationId) as Row | undefined;
        const after = options.after;
        const rows = sql(
          `SELECT * FROM connection_members WHERE conversation_id = ? AND (role_rank, user_id) > (?, ?)
           ORDER BY role_rank, user_id LIMIT ?`,
        ).all(
          conversationId,
          after === undefined ? -1 : ROLE_RANK[after.role],
          after === undefined ? "" : after.userId,
          options.limit,
        ) as Row[];
        return {
          membershipVersion: conversation === undefined ? 0 : Number(conversation.membership_version),
          members: rows.map(toMember),
        };
      });
    },

    async listMemberships(userId, options) {
      const params: SQLInputValue[] = [userId, options.afterConversationId ?? ""];
      let kindClause = "";
      if (options.kind !== undefined) {
        kindClause = "AND c.kind = ?";
        params.push(options.kind);
      }
      params.push(options.limit);
      const rows = sql(
        `SELECT c.*, m.user_id AS member_user_id, m.role_rank, m.joined_at
         FROM connection_members m JOIN connection_conversations c ON c.conversation_id = m.conversation_id
         WHERE m.user_id = ? AND m.conversation_id > ? AND c.deleted = 0 ${kindClause}
         ORDER BY m.conversation_id LIMIT ?`,
      ).all(...params) as Row[];
      return rows.map(
        (row): MembershipRecord => ({
          conversation: toConversation(row),
          member: toMember({ ...row, user_id: row.member_user_id }),
        }),
      );
    },

    async shareConversation(userA, userB) {
      const row = sql(
        `SELECT 1 AS shared FROM connection_members a
         JOIN connection_members b ON b.conversation_id = a.conversation_id AND b.user_id = ?
         WHERE a.user_id = ? LIMIT 1`,
      ).get(userB, userA);
      return row !== undefined;
    },

    async createGroup(commit: GroupCreate): Promise<GroupCreateResult> {
      return inTransaction(db, (): GroupCreateResult => {
        const { request } = commit;
        if (request !== undefined) {
          const existing = findGroupRequest(request.userId, request.requestId);
          if (existing !== undefined) return { created: false, existing };
          sql(
            `INSERT INTO connection_group_requests (user_id, request_id, conversation_id, fingerprint, created_at)
             VALUES (?, ?, ?, ?, ?)`,
          ).run(
            request.userId,
            request.requestId,
            request.conversationId,
            request.fingerprint,
            commit.conversation.createdAt.getTime(),
          );
        }
        if (
          sql("SELECT 1 AS found FROM connection_conversations WHERE conversation_id = ?").get(
            commit.conversation.conversationId,
          ) !== undefined
        ) {
          throw new StoreConflictError(`conversation ${commit.conversation.conversationId} exists`);
        }
        writeConversation(commit.conversation);
        for (const member of commit.members) writeMember(member);
        appendEvents(commit.events);
        return { created: true };
      });
    },

    async getGroupRequest(userId, requestId) {
      return findGroupRequest(userId, requestId);
    },

    async commitConversation(commit: ConversationCommit) {
      const { conversation } = commit;
      inTransaction(db, () => {
        const row = sql(
          "SELECT membership_version FROM connection_conversations WHERE conversation_id = ?",
        ).get(conversation.conversationId) as Row | undefined;
        if (row === undefined || Number(row.membership_version) !== commit.expectedVersion) {
          throw new StoreConflictError(`conversation ${conversation.conversationId} changed`);
        }
        writeConversation(conversation);
        const remove = sql("DELETE FROM connection_members WHERE conversation_id = ? AND user_id = ?");
        for (const userId of commit.removeMemberIds) remove.run(conversation.conversationId, userId);
        for (const member of commit.upsertMembers) writeMember(member);
        appendEvents(commit.events);
      });
    },

    async close() {
      if (ownsDb && db.isOpen) db.close();
    },
  };

  function findGroupRequest(userId: string, requestId: string): GroupRequestRecord | undefined {
    const row = sql("SELECT * FROM connection_group_requests WHERE user_id = ? AND request_id = ?").get(
      userId,
      requestId,
    ) as Row | undefined;
    if (row === undefined) return undefined;
    return {
      userId: String(row.user_id),
      requestId: String(row.request_id),
      conversationId: String(row.conversation_id),
      fingerprint: String(row.fingerprint),
    };
  }

  return store;
}

function date(value: unknown): Date {
  return new Date(Number(value));
}

function toUser(row: Row): UserRecord {
  return {
    userId: String(row.user_id),
    displayName: String(row.display_name),
    avatarUrl: String(row.avatar_url),
    profileUpdatedAt: row.profile_updated_at === null ? undefined : date(row.profile_updated_at),
    createdAt: date(row.created_at),
  };
}

function toView(row: Row): ViewRecord {
  return {
    userId: String(row.user_id),
    otherUserId: String(row.other_user_id),
    state: String(row.state) as ViewRecord["state"],
    createdAt: date(row.created_at),
    updatedAt: date(row.updated_at),
  };
}

function toConversation(row: Row): ConversationRecord {
  const low = row.direct_low_user_id;
  const high = row.direct_high_user_id;
  return {
    conversationId: String(row.conversation_id),
    kind: String(row.kind) as ConversationKind,
    name: String(row.name),
    ownerUserId: String(row.owner_user_id),
    directUsers: low === null || high === null ? undefined : { low: String(low), high: String(high) },
    membershipVersion: Number(row.membership_version),
    memberCount: Number(row.member_count),
    createdAt: date(row.created_at),
    updatedAt: date(row.updated_at),
    deleted: Number(row.deleted) === 1,
  };
}

function toMember(row: Row): MemberRecord {
  const role = ROLE_BY_RANK[Number(row.role_rank)];
  if (role === undefined) throw new Error(`unknown role rank ${String(row.role_rank)}`);
  return {
    conversationId: String(row.conversation_id),
    userId: String(row.user_id),
    role,
    joinedAt: date(row.joined_at),
  };
}
