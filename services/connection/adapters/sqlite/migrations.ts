/**
 * The connection service's tables in the embedded profile's SQLite file, applied by lib/sqlite.ts
 * `migrate(db, "connection", CONNECTION_MIGRATIONS)`. Released migrations are never edited: add
 * a new one. Every table is prefixed `connection_` because services share the file. Times are
 * milliseconds since the epoch.
 */
export const CONNECTION_MIGRATIONS: readonly string[] = [
  `
  -- A known user and their profile (display_name '' and profile_updated_at NULL until one is set).
  CREATE TABLE connection_users (
    user_id TEXT NOT NULL PRIMARY KEY,
    display_name TEXT NOT NULL,
    avatar_url TEXT NOT NULL,
    profile_updated_at INTEGER,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;

  -- One row per pair that ever interacted (low < high): its version, for optimistic commits and
  -- ContactChanged/BlockChanged ordering.
  CREATE TABLE connection_pairs (
    low_user_id TEXT NOT NULL,
    high_user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (low_user_id, high_user_id)
  ) WITHOUT ROWID;

  -- How user_id sees other_user_id; no row means none. Listing a user's connections reads the
  -- primary key in order; "who blocked me" reads the second index.
  CREATE TABLE connection_views (
    user_id TEXT NOT NULL,
    other_user_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending_incoming', 'pending_outgoing', 'accepted', 'blocked')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, other_user_id)
  ) WITHOUT ROWID;
  CREATE INDEX connection_views_towards ON connection_views (other_user_id, user_id, state);

  -- Direct conversations (kept after they end, so a reconnected pair continues the membership
  -- version) and groups.
  CREATE TABLE connection_conversations (
    conversation_id TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name TEXT NOT NULL,
    owner_user_id TEXT NOT NULL,
    direct_low_user_id TEXT,
    direct_high_user_id TEXT,
    membership_version INTEGER NOT NULL,
    member_count INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL
  ) WITHOUT ROWID;

  -- Members of live conversations only. role_rank: 0 owner, 1 admin, 2 member, so the listing
  -- order (owner, admins, members, each by user id) is an index range scan.
  CREATE TABLE connection_members (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role_rank INTEGER NOT NULL CHECK (role_rank IN (0, 1, 2)),
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
  ) WITHOUT ROWID;
  CREATE INDEX connection_members_by_role ON connection_members (conversation_id, role_rank, user_id);
  CREATE INDEX connection_members_by_user ON connection_members (user_id, conversation_id);

  -- CreateGroup request ids, so a retry returns the group the first attempt created.
  CREATE TABLE connection_group_requests (
    user_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, request_id)
  ) WITHOUT ROWID;
  `,
];
