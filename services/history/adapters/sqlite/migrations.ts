/**
 * The history service's tables in the embedded SQLite file (owner "history"). Released migrations
 * are never edited; a change is a new entry. Times are unix milliseconds.
 */
export const HISTORY_MIGRATIONS: readonly string[] = [
  `-- The seq counter of each conversation: last_seq only grows, and outlives the messages it numbered.
   CREATE TABLE history_conversations (
     conversation_id TEXT PRIMARY KEY,
     last_seq INTEGER NOT NULL
   ) WITHOUT ROWID;

   -- Each message once per conversation, clustered by seq (Cassandra: partition by conversation and bucket).
   CREATE TABLE history_messages (
     conversation_id TEXT NOT NULL,
     seq INTEGER NOT NULL,
     message_id TEXT NOT NULL,
     sender_user_id TEXT NOT NULL,
     sender_device_id TEXT NOT NULL,
     client_message_id TEXT NOT NULL,
     kind INTEGER NOT NULL,
     shared_ciphertext BLOB,
     accepted_at INTEGER NOT NULL,
     stored_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     membership_version INTEGER NOT NULL,
     traceparent TEXT NOT NULL,
     force_trace INTEGER NOT NULL,
     PRIMARY KEY (conversation_id, seq)
   ) WITHOUT ROWID;
   CREATE UNIQUE INDEX history_messages_by_id ON history_messages (message_id);
   CREATE UNIQUE INDEX history_messages_by_client_id
     ON history_messages (sender_user_id, sender_device_id, client_message_id);
   CREATE INDEX history_messages_by_expiry ON history_messages (expires_at);

   -- The devices a message was for, each with its inbox position and pairwise ciphertext (NULL when shared).
   CREATE TABLE history_message_targets (
     conversation_id TEXT NOT NULL,
     seq INTEGER NOT NULL,
     user_id TEXT NOT NULL,
     device_id TEXT NOT NULL,
     position INTEGER NOT NULL,
     ciphertext BLOB,
     PRIMARY KEY (conversation_id, seq, user_id, device_id)
   ) WITHOUT ROWID;

   -- Per recipient user and message: when it first reached one of the user's devices, when it was read.
   -- The key serves the watermark scan (first unacknowledged seq of a user); the index, one message's receipts.
   CREATE TABLE history_message_recipients (
     conversation_id TEXT NOT NULL,
     user_id TEXT NOT NULL,
     seq INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     delivered_at INTEGER,
     read_at INTEGER,
     PRIMARY KEY (conversation_id, user_id, seq)
   ) WITHOUT ROWID;
   CREATE INDEX history_message_recipients_by_message ON history_message_recipients (conversation_id, seq);

   -- Every device history has seen: its inbox position counter (only grows, never removed) and when it was last seen.
   CREATE TABLE history_devices (
     user_id TEXT NOT NULL,
     device_id TEXT NOT NULL,
     last_position INTEGER NOT NULL,
     last_seen_at INTEGER NOT NULL,
     PRIMARY KEY (user_id, device_id)
   ) WITHOUT ROWID;

   -- Per-device inboxes in position order: a message (seq set) or a receipt (receipt_key and receipt set).
   CREATE TABLE history_inbox (
     user_id TEXT NOT NULL,
     device_id TEXT NOT NULL,
     position INTEGER NOT NULL,
     conversation_id TEXT NOT NULL,
     seq INTEGER,
     receipt_key TEXT,
     receipt TEXT,
     expires_at INTEGER NOT NULL,
     PRIMARY KEY (user_id, device_id, position)
   ) WITHOUT ROWID;
   CREATE INDEX history_inbox_by_message ON history_inbox (user_id, device_id, conversation_id, seq)
     WHERE seq IS NOT NULL;
   CREATE UNIQUE INDEX history_inbox_by_receipt ON history_inbox (user_id, device_id, conversation_id, receipt_key)
     WHERE receipt_key IS NOT NULL;
   CREATE INDEX history_inbox_by_expiry ON history_inbox (expires_at);

   -- Each member's watermarks in a conversation, and when they last moved.
   CREATE TABLE history_receipt_states (
     conversation_id TEXT NOT NULL,
     user_id TEXT NOT NULL,
     delivered_up_to_seq INTEGER NOT NULL,
     read_up_to_seq INTEGER NOT NULL,
     delivered_moved_at INTEGER,
     read_moved_at INTEGER,
     PRIMARY KEY (conversation_id, user_id)
   ) WITHOUT ROWID;`,
  `-- When the device was last removed (KeyChanged DEVICE_REMOVED), NULL when never: its inbox was
   -- dropped then, and messages accepted up to then get no inbox item for it.
   ALTER TABLE history_devices ADD COLUMN removed_at INTEGER;`,
];
