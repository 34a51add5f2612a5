/**
 * The history service's Cassandra tables (component "history"). Released migrations are never
 * edited; a change is a new entry. Every statement is idempotent (see lib/cassandra/migrations.ts).
 *
 * Rows that retention expires are written with a TTL (accepted_at + retention, counted from the
 * time of the write), so Cassandra removes them itself. Counters (seqs, inbox positions), receipt
 * states and the devices directory have no TTL: they outlive the messages they numbered.
 */
import type { Migration } from "../../../../lib/cassandra/migrations.ts";
import { outboxTableStatements } from "../../../../lib/cassandra/outbox.ts";

export interface HistoryTables {
  readonly conversations: string;
  readonly stagedMessages: string;
  readonly messageIds: string;
  readonly clientMessageIds: string;
  readonly messages: string;
  readonly messageBuckets: string;
  readonly inbox: string;
  readonly devices: string;
  readonly recipients: string;
  readonly messageRecipients: string;
  readonly receiptStates: string;
  readonly outbox: string;
}

const PREFIX = /^([a-z][a-z0-9]{0,11}_)?$/;

/** The table names, each behind `prefix` (tests give each store instance its own tables in one keyspace). */
export function historyTables(prefix = ""): HistoryTables {
  if (!PREFIX.test(prefix)) {
    throw new Error(
      `invalid history table prefix "${prefix}": up to 12 lower-case letters and digits, then _`,
    );
  }
  return {
    conversations: `${prefix}history_conversations`,
    stagedMessages: `${prefix}history_staged_messages`,
    messageIds: `${prefix}history_message_ids`,
    clientMessageIds: `${prefix}history_client_message_ids`,
    messages: `${prefix}history_messages`,
    messageBuckets: `${prefix}history_message_buckets`,
    inbox: `${prefix}history_inbox`,
    devices: `${prefix}history_devices`,
    recipients: `${prefix}history_recipients`,
    messageRecipients: `${prefix}history_message_recipients`,
    receiptStates: `${prefix}history_receipt_states`,
    outbox: `${prefix}history_outbox`,
  };
}

/**
 * What a row of a device's inbox partition is (its first clustering column). The partition holds
 * more than the inbox items because a conditional batch can only change one partition: placing
 * an item, bumping the position counter and recording the placement must commit together.
 */
export const InboxRow = {
  /** (position): an item of the inbox, a message or a receipt, in Sync order. */
  item: 0,
  /**
   * (conversation, seq): the message was placed for the device, at `position`, with the device's
   * pairwise ciphertext. Kept until the message expires, acknowledged or not: it makes placing
   * idempotent, tells whether the device was a target, and serves the device's ciphertexts.
   */
  placed: 1,
  /** (conversation, seq): a message item not yet acknowledged, at `position` (acks find items by seq). */
  unacknowledged: 2,
  /** (conversation, receipt key): the device's current receipt item of one reader and kind. */
  receiptSlot: 3,
} as const;

export function historyMigrations(t: HistoryTables): Migration[] {
  return [
    {
      version: 1,
      description: "history: conversations, messages by seq bucket, device inboxes, receipts, outbox",
      statements: [
        // The seq counter of each conversation, and the message whose store step is under way
        // (claimed with its seq, effects not all applied yet): at most one at a time, with the
        // token of the call that claimed it (a claim whose outcome was unknown finds its own).
        `CREATE TABLE IF NOT EXISTS ${t.conversations} (
           conversation_id text PRIMARY KEY,
           last_seq bigint,
           pending_message_id text,
           pending_claim text)`,
        // A store step's input, written before its seq is claimed, so whoever finds the step
        // pending can finish it. Deleted once finished; the TTL only catches leftovers.
        `CREATE TABLE IF NOT EXISTS ${t.stagedMessages} (
           message_id text PRIMARY KEY,
           conversation_id text,
           step text)`,
        // Dedup keys: a redelivery (same message id) or a sender retry (same client id).
        `CREATE TABLE IF NOT EXISTS ${t.messageIds} (
           message_id text PRIMARY KEY,
           conversation_id text,
           seq bigint)`,
        `CREATE TABLE IF NOT EXISTS ${t.clientMessageIds} (
           sender_user_id text,
           sender_device_id text,
           client_message_id text,
           message_id text,
           conversation_id text,
           seq bigint,
           PRIMARY KEY ((sender_user_id, sender_device_id, client_message_id)))`,
        // Each message once, in partitions of a fixed seq range, so any seq finds its partition
        // and no partition grows past messagesPerBucket rows. Written once and expired by TTL:
        // time-window compaction drops whole expired files instead of rewriting them.
        `CREATE TABLE IF NOT EXISTS ${t.messages} (
           conversation_id text,
           bucket bigint,
           seq bigint,
           message_id text,
           sender_user_id text,
           sender_device_id text,
           client_message_id text,
           kind int,
           shared_ciphertext blob,
           accepted_at timestamp,
           stored_at timestamp,
           expires_at timestamp,
           membership_version varint,
           traceparent text,
           force_trace boolean,
           PRIMARY KEY ((conversation_id, bucket), seq))
         WITH CLUSTERING ORDER BY (seq ASC)
         AND compaction = {'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}`,
        // The buckets of a conversation that still hold retained messages (each row lives as long
        // as the longest-lived message of its bucket), so listing skips expired ranges.
        `CREATE TABLE IF NOT EXISTS ${t.messageBuckets} (
           conversation_id text,
           bucket bigint,
           PRIMARY KEY (conversation_id, bucket))`,
        // One partition per device: its position counter and removal mark (static), its items
        // and the rows that index them (see InboxRow). Acknowledged items are deleted; a deleted
        // item brought back by a replica that missed the delete would only be shown (and
        // acknowledged) again, deduplicated by message id, so tombstones are purged after 3 hours
        // (the default hint window) rather than 10 days.
        `CREATE TABLE IF NOT EXISTS ${t.inbox} (
           user_id text,
           device_id text,
           row_kind tinyint,
           scope text,
           num bigint,
           tag text,
           last_position bigint static,
           removed_at timestamp static,
           position bigint,
           conversation_id text,
           seq bigint,
           accepted_at timestamp,
           ciphertext blob,
           receipt text,
           version bigint,
           expires_at timestamp,
           PRIMARY KEY ((user_id, device_id), row_kind, scope, num, tag))
         WITH gc_grace_seconds = 10800`,
        // Every device history has seen, per user: when last seen and last removed. Both are
        // written with the time itself as the write timestamp, so the latest wins whatever order
        // the writes land in.
        `CREATE TABLE IF NOT EXISTS ${t.devices} (
           user_id text,
           device_id text,
           last_seen_at timestamp,
           removed_at timestamp,
           PRIMARY KEY (user_id, device_id))`,
        // Per recipient user: each message addressed to the user, by seq (the watermark scans).
        `CREATE TABLE IF NOT EXISTS ${t.recipients} (
           conversation_id text,
           user_id text,
           seq bigint,
           message_id text,
           sender_user_id text,
           expires_at timestamp,
           delivered_at timestamp,
           read_at timestamp,
           PRIMARY KEY ((conversation_id, user_id), seq))`,
        // The same marks per message (GetReceipts of one message reads one partition).
        `CREATE TABLE IF NOT EXISTS ${t.messageRecipients} (
           conversation_id text,
           seq bigint,
           user_id text,
           delivered_at timestamp,
           read_at timestamp,
           PRIMARY KEY ((conversation_id, seq), user_id))`,
        // Each member's watermarks, a version bumped by every recorded receipt, and the receipt
        // whose effects are under way (at most one per member and conversation).
        `CREATE TABLE IF NOT EXISTS ${t.receiptStates} (
           conversation_id text,
           user_id text,
           delivered_up_to_seq bigint,
           read_up_to_seq bigint,
           delivered_moved_at timestamp,
           read_moved_at timestamp,
           version bigint,
           pending text,
           PRIMARY KEY ((conversation_id, user_id)))`,
        ...outboxTableStatements(t.outbox),
      ],
    },
  ];
}
