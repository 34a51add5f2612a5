import type { Migration } from "../../../../lib/cassandra/migrations.ts";
import { outboxTableStatements } from "../../../../lib/cassandra/outbox.ts";

/**
 * The connection service's tables on Cassandra, applied by `applyMigrations(client, "connection",
 * CONNECTION_CASSANDRA_MIGRATIONS, logger)`. Released migrations are never edited: add one.
 * Every table is prefixed `connection_` because services may share a keyspace.
 *
 * Owner rows (a pair, a group) are changed only by lightweight transactions and carry the commit
 * markers (`commit_ts`, `applied_ts`, `pending`) of the pending-commit scheme described in
 * cassandra-connection-store.ts; every other table is derived from them and written by the
 * commits' batches with `USING TIMESTAMP` = the commit's timestamp.
 */
export const CONNECTION_OUTBOX_TABLE = "connection_outbox";

/** Tables holding data (for tests that empty them between cases). */
export const CONNECTION_TABLES = [
  "connection_users",
  "connection_pairs",
  "connection_views",
  "connection_views_by_state",
  "connection_views_towards",
  "connection_conversations",
  "connection_memberships",
  "connection_group_requests",
  "connection_commit_intents",
  CONNECTION_OUTBOX_TABLE,
] as const;

export const CONNECTION_CASSANDRA_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description:
      "users, pairs and their views, conversations with members, memberships, group requests, commit intents, outbox",
    statements: [
      // A known user and their profile; written only by lightweight transactions.
      `CREATE TABLE IF NOT EXISTS connection_users (
        user_id text PRIMARY KEY,
        display_name text,
        avatar_url text,
        profile_updated_at timestamp,
        created_at timestamp)`,
      // The owner row of a pair (low < high): its version and both views, plus the commit markers.
      `CREATE TABLE IF NOT EXISTS connection_pairs (
        low_user_id text,
        high_user_id text,
        version int,
        low_state text, low_created_at timestamp, low_updated_at timestamp,
        high_state text, high_created_at timestamp, high_updated_at timestamp,
        commit_ts bigint,
        applied_ts bigint,
        pending blob,
        PRIMARY KEY ((low_user_id, high_user_id)))`,
      // How user_id sees other_user_id, per user: listings in other-user order and point lookups.
      `CREATE TABLE IF NOT EXISTS connection_views (
        user_id text,
        other_user_id text,
        state text,
        created_at timestamp,
        updated_at timestamp,
        PRIMARY KEY (user_id, other_user_id))`,
      // The same views by state, so a listing filtered by state reads only matching rows.
      `CREATE TABLE IF NOT EXISTS connection_views_by_state (
        user_id text,
        state text,
        other_user_id text,
        created_at timestamp,
        updated_at timestamp,
        PRIMARY KEY (user_id, state, other_user_id))`,
      // The views others hold towards other_user_id ("who blocked me"), one partition per user.
      `CREATE TABLE IF NOT EXISTS connection_views_towards (
        other_user_id text,
        user_id text,
        state text,
        created_at timestamp,
        updated_at timestamp,
        PRIMARY KEY (other_user_id, user_id))`,
      // One partition per conversation: the record as static columns and one row per live member,
      // so a page of members and the membership version are one single-partition (isolated) read.
      // A group's record and markers are written by lightweight transactions; a direct
      // conversation's record by its pair's commits (it has no markers of its own).
      `CREATE TABLE IF NOT EXISTS connection_conversations (
        conversation_id text,
        user_id text,
        role text,
        joined_at timestamp,
        kind text static,
        name text static,
        owner_user_id text static,
        direct_low_user_id text static,
        direct_high_user_id text static,
        membership_version int static,
        member_count int static,
        created_at timestamp static,
        updated_at timestamp static,
        deleted boolean static,
        commit_ts bigint static,
        applied_ts bigint static,
        pending blob static,
        PRIMARY KEY (conversation_id, user_id))`,
      // The live conversations of a user, by kind then id (a listing of one kind is one slice;
      // of both kinds, two slices merged).
      `CREATE TABLE IF NOT EXISTS connection_memberships (
        user_id text,
        kind text,
        conversation_id text,
        role text,
        joined_at timestamp,
        PRIMARY KEY (user_id, kind, conversation_id))`,
      // CreateGroup request ids, claimed by a lightweight transaction. The claim carries the whole
      // creation (record, commit timestamp, effects), so whoever finds a claim without its group
      // (its writer died in between) finishes the creation.
      `CREATE TABLE IF NOT EXISTS connection_group_requests (
        user_id text,
        request_id text,
        conversation_id text,
        fingerprint text,
        created_at timestamp,
        conversation text,
        commit_ts bigint,
        pending blob,
        PRIMARY KEY ((user_id, request_id)))`,
      // Commits under way, by minute and shard, written before each lightweight transaction and
      // deleted with the commit's last batch: what is left in an old minute is a commit whose
      // writer died, which the recovery sweep rolls forward. A deleted intent coming back after
      // gc_grace_seconds costs one needless check, so a short grace is safe; the TTL bounds what
      // a sweep that never ran leaves behind.
      `CREATE TABLE IF NOT EXISTS connection_commit_intents (
        bucket bigint,
        shard int,
        owner text,
        commit_ts bigint,
        PRIMARY KEY ((bucket, shard), owner, commit_ts))
        WITH default_time_to_live = 259200 AND gc_grace_seconds = 3600`,
      ...outboxTableStatements(CONNECTION_OUTBOX_TABLE),
    ],
  },
];
