import type { DatabaseSync, SQLOutputValue, StatementSync } from "node:sqlite";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import { createSqliteOutbox } from "../../../../lib/outbox.ts";
import { createGroupCommit, inTransaction, migrate, openSqlite } from "../../../../lib/sqlite.ts";
import type {
  AssignedMessage,
  HistoryStore,
  RecordedReceipt,
  RecordReceiptInput,
  RecordReceiptResult,
  StoreMessageResult,
} from "../../domain/history-store.ts";
import type {
  DeviceMessage,
  DeviceRef,
  InboxItem,
  MemberReceiptState,
  MessageRecipientState,
  ReceiptRecord,
  SeqId,
  StoredMessage,
} from "../../domain/model.ts";
import { sameDevice } from "../../domain/model.ts";
import { advanceWatermark, mergeReceipt, notifyUserIds, receiptKey } from "../../domain/receipts.ts";
import { HISTORY_MIGRATIONS } from "./migrations.ts";

export type SqliteHistoryStoreOptions =
  /** A database the caller opened (and closes): the store only adds its tables. */
  | { readonly db: DatabaseSync }
  /** A file the store opens and closes itself (`:memory:` for tests). */
  | { readonly path: string };

/** The outbox table the history service's relay reads. */
export const HISTORY_OUTBOX_TABLE = "history_outbox";

/** Rows the sweep deletes per transaction, so it never holds the write lock for long. */
const SWEEP_CHUNK = 500;
/** Seqs and positions beyond any real value, for open ranges. */
const NO_UPPER_BOUND = Number.MAX_SAFE_INTEGER;

type Row = Record<string, SQLOutputValue>;

/**
 * The embedded HistoryStore on node:sqlite. Every write method runs synchronously, with its outbox
 * events, inside one `BEGIN IMMEDIATE` transaction (stored messages and receipts inside a savepoint
 * of a transaction shared with the writes queued beside them: `createGroupCommit`): within a
 * process nothing interleaves with it, and across processes sharing the file SQLite's write lock
 * serializes it. That is what makes
 * seqs contiguous (read last_seq, write last_seq + 1 and the message in one transaction: a crash or
 * an error rolls back both, so no seq is skipped, and the unique keys on message id and client id
 * make a redelivery find the first copy).
 */
export function createSqliteHistoryStore(options: SqliteHistoryStoreOptions): HistoryStore {
  const ownsDb = "path" in options;
  const db = "path" in options ? openSqlite(options.path) : options.db;
  try {
    migrate(db, "history", HISTORY_MIGRATIONS);
  } catch (err) {
    if (ownsDb) db.close();
    throw err;
  }
  const outbox = createSqliteOutbox(db, HISTORY_OUTBOX_TABLE);
  // Stored messages and receipts come in bursts (a group's acknowledgements): one fsync per burst.
  const groupCommit = createGroupCommit(db);
  const q = statements(db);

  const bumpPosition = (device: DeviceRef, seenAt: number): number =>
    Number((q.bumpPosition.get(device.userId, device.deviceId, seenAt, seenAt) as Row).last_position);

  const touchDevice = (device: DeviceRef, seenAt: number) => {
    q.touchDevice.run(device.userId, device.deviceId, seenAt, seenAt);
  };

  const lastSeq = (conversationId: string): number => {
    const row = q.lastSeq.get(conversationId) as Row | undefined;
    return row === undefined ? 0 : Number(row.last_seq);
  };

  const retainedMessage = (
    conversationId: string,
    messageId: string,
    now: Date,
  ): StoredMessage | undefined => {
    const row = q.messageById.get(messageId) as Row | undefined;
    if (
      row === undefined ||
      row.conversation_id !== conversationId ||
      Number(row.expires_at) <= now.getTime()
    ) {
      return undefined;
    }
    return toMessage(row);
  };

  function recordReceipt(
    input: RecordReceiptInput,
    event: (recorded: RecordedReceipt) => OutboxEvent | undefined,
  ): RecordReceiptResult {
    const { conversationId, reader, kind } = input;
    const now = input.now.getTime();
    const at = input.at.getTime();
    const last = lastSeq(conversationId);
    const stateRow = q.receiptState.get(conversationId, reader.userId) as Row | undefined;
    const delivered = stateRow === undefined ? 0 : Number(stateRow.delivered_up_to_seq);
    const read = stateRow === undefined ? 0 : Number(stateRow.read_up_to_seq);
    const watermark = kind === "read" ? read : delivered;
    const pendingColumn = kind === "read" ? q.pendingRead : q.pendingDelivered;

    // 1. The messages the acknowledgement names, and 2. out of the reader device's inbox with them.
    let ackedUpTo = 0;
    let newly: { seq: number; messageId: string; senderUserId: string }[] = [];
    if ("upToSeq" in input.target) {
      ackedUpTo = Math.min(input.target.upToSeq, last);
      q.clearInboxUpTo.run(reader.userId, reader.deviceId, conversationId, ackedUpTo);
      // Another device of the user acknowledged this far already (a group's members have several).
      if (ackedUpTo > watermark) {
        newly = (
          pendingColumn.range.all(conversationId, reader.userId, watermark, ackedUpTo, now) as Row[]
        ).map((row) => ({
          seq: Number(row.seq),
          messageId: String(row.message_id),
          senderUserId: String(row.sender_user_id),
        }));
      }
    } else {
      for (const messageId of new Set(input.target.messageIds)) {
        const row = q.messageById.get(messageId) as Row | undefined;
        if (row === undefined || row.conversation_id !== conversationId || Number(row.expires_at) <= now)
          continue;
        const seq = Number(row.seq);
        q.clearInboxMessage.run(reader.userId, reader.deviceId, conversationId, seq);
        if (pendingColumn.one.get(conversationId, reader.userId, seq) !== undefined) {
          newly.push({ seq, messageId, senderUserId: String(row.sender_user_id) });
        }
      }
      newly.sort((a, b) => a.seq - b.seq);
    }

    // 3. Marked for the reader's user (read implies delivered).
    for (const message of newly) {
      if (kind === "read") q.markRead.run(at, at, conversationId, reader.userId, message.seq);
      else q.markDelivered.run(at, conversationId, reader.userId, message.seq);
    }

    // 4. The watermarks: the first seq still pending above each decides how far it may go.
    const firstPending = (statement: StatementSync, from: number): number | undefined => {
      if (from >= last) return undefined; // no seq above the last one: the usual case of a caught-up reader
      const row = statement.get(conversationId, reader.userId, from, now) as Row | undefined;
      return row === undefined || row.seq === null ? undefined : Number(row.seq);
    };
    const nextDelivered = advanceWatermark(
      delivered,
      ackedUpTo,
      firstPending(q.pendingDelivered.first, Math.max(delivered, ackedUpTo)),
      last,
    );
    const nextRead =
      kind === "read"
        ? advanceWatermark(
            read,
            ackedUpTo,
            firstPending(q.pendingRead.first, Math.max(read, ackedUpTo)),
            last,
          )
        : read;
    const state = { deliveredUpToSeq: nextDelivered, readUpToSeq: nextRead };
    touchDevice(reader, now);
    if (newly.length === 0 && nextDelivered === delivered && nextRead === read) {
      return { recorded: false, state, receipt: undefined };
    }
    q.upsertReceiptState.run(
      conversationId,
      reader.userId,
      nextDelivered,
      nextRead,
      nextDelivered !== delivered
        ? at
        : stateRow === undefined
          ? null
          : (stateRow.delivered_moved_at ?? null),
      nextRead !== read ? at : stateRow === undefined ? null : (stateRow.read_moved_at ?? null),
    );

    // 5. The event, and the receipt in the inboxes of the users it concerns.
    const receipt: ReceiptRecord = {
      conversationId,
      reader,
      kind,
      upToSeq: kind === "read" ? nextRead : nextDelivered,
      messageIds:
        "messageIds" in input.target ? newly.map((m): SeqId => ({ messageId: m.messageId, seq: m.seq })) : [],
      at: input.at,
    };
    const recorded: RecordedReceipt = {
      receipt,
      notifyUserIds: notifyUserIds(
        kind,
        reader.userId,
        newly.map((m) => m.senderUserId),
      ),
    };
    const outgoing = event(recorded);
    if (outgoing !== undefined) outbox.append(outgoing);
    const key = receiptKey(receipt);
    const expiresAt = input.receiptExpiresAt.getTime();
    for (const userId of recorded.notifyUserIds) {
      for (const row of q.knownDevices.all(userId, input.devicesSeenSince.getTime()) as Row[]) {
        const device = { userId, deviceId: String(row.device_id) };
        if (sameDevice(device, reader)) continue;
        const previous = q.inboxReceipt.get(userId, device.deviceId, conversationId, key) as Row | undefined;
        const merged = mergeReceipt(
          previous === undefined ? undefined : parseReceipt(String(previous.receipt)),
          receipt,
        );
        const position = bumpPosition(device, Number(row.last_seen_at));
        // Moves the earlier receipt of the same key, if any, to the new position with the merge.
        q.placeInboxReceipt.run(
          userId,
          device.deviceId,
          position,
          conversationId,
          key,
          serializeReceipt(merged),
          expiresAt,
        );
      }
    }
    return { recorded: true, state, receipt: recorded };
  }

  return {
    outbox,

    async storeMessage(input, events): Promise<StoreMessageResult> {
      return groupCommit.run(() => {
        const m = input.message;
        const byId = q.messageById.get(m.messageId) as Row | undefined;
        if (byId !== undefined) {
          return { outcome: "duplicate", by: "message_id", messageId: m.messageId, seq: Number(byId.seq) };
        }
        const byClientId = q.messageByClientId.get(m.sender.userId, m.sender.deviceId, m.clientMessageId) as
          | Row
          | undefined;
        if (byClientId !== undefined) {
          return {
            outcome: "duplicate",
            by: "client_message_id",
            messageId: String(byClientId.message_id),
            seq: Number(byClientId.seq),
          };
        }
        const seq = Number((q.bumpSeq.get(m.conversationId) as Row).last_seq);
        const storedAt = input.storedAt.getTime();
        const expiresAt = input.expiresAt.getTime();
        q.insertMessage.run(
          m.conversationId,
          seq,
          m.messageId,
          m.sender.userId,
          m.sender.deviceId,
          m.clientMessageId,
          m.kind,
          m.sharedCiphertext ?? null,
          m.acceptedAt.getTime(),
          storedAt,
          expiresAt,
          input.membershipVersion,
          m.traceparent,
          m.forceTrace ? 1 : 0,
        );
        touchDevice(m.sender, storedAt);
        const targets: AssignedMessage["targets"][number][] = [];
        const acceptedAt = m.acceptedAt.getTime();
        for (const target of input.targets) {
          // Accepted before its device was removed, stored after: the inbox was dropped already.
          const removed = q.removedAt.get(target.device.userId, target.device.deviceId) as Row | undefined;
          if (removed?.removed_at != null && acceptedAt <= Number(removed.removed_at)) continue;
          const position = bumpPosition(target.device, storedAt);
          q.insertTarget.run(
            m.conversationId,
            seq,
            target.device.userId,
            target.device.deviceId,
            position,
            target.ciphertext ?? null,
          );
          q.insertInboxMessage.run(
            target.device.userId,
            target.device.deviceId,
            position,
            m.conversationId,
            seq,
            expiresAt,
          );
          targets.push({ device: target.device, ciphertext: target.ciphertext, position });
        }
        for (const userId of new Set(input.recipientUserIds)) {
          q.insertRecipient.run(m.conversationId, userId, seq, expiresAt);
        }
        for (const event of events({ message: { ...m, seq }, targets, storedAt: input.storedAt })) {
          outbox.append(event);
        }
        return { outcome: "stored", seq };
      });
    },

    async readInbox({ device, afterPosition, limit, now }) {
      const positionRow = q.lastPosition.get(device.userId, device.deviceId) as Row | undefined;
      const at = now.getTime();
      const rows = q.inbox.all(device.userId, device.deviceId, afterPosition, at, at, limit + 1) as Row[];
      const items = rows.slice(0, limit).map((row): InboxItem => {
        const position = Number(row.position);
        if (row.seq === null)
          return { kind: "receipt", position, receipt: parseReceipt(String(row.receipt)) };
        return { kind: "message", position, message: toDeviceMessage(row) };
      });
      return {
        items,
        more: rows.length > limit,
        lastPosition: positionRow === undefined ? 0 : Number(positionRow.last_position),
      };
    },

    async oldestUnacknowledgedPosition(device, now) {
      const row = q.oldestMessageInInbox.get(device.userId, device.deviceId, now.getTime()) as
        | Row
        | undefined;
      return row === undefined || row.position === null ? undefined : Number(row.position);
    },

    async lastSeqs(conversationIds) {
      return new Map(conversationIds.map((id) => [id, lastSeq(id)]));
    },

    async listMessages(input) {
      const statement = input.order === "newest_first" ? q.messagesNewestFirst : q.messagesOldestFirst;
      const rows = statement.all(
        input.device.userId,
        input.device.deviceId,
        input.conversationId,
        input.afterSeq,
        input.beforeSeq === 0 ? NO_UPPER_BOUND : input.beforeSeq,
        input.now.getTime(),
        input.limit + 1,
      ) as Row[];
      return {
        messages: rows.slice(0, input.limit).map(toDeviceMessage),
        more: rows.length > input.limit,
        lastSeq: lastSeq(input.conversationId),
      };
    },

    async recordReceipt(input, event) {
      return groupCommit.run(() => recordReceipt(input, event));
    },

    async receiptStates(conversationId, userIds) {
      const states = new Map<string, MemberReceiptState>();
      for (const userId of userIds) {
        const row = q.receiptState.get(conversationId, userId) as Row | undefined;
        if (row === undefined) continue;
        states.set(userId, {
          userId,
          deliveredUpToSeq: Number(row.delivered_up_to_seq),
          readUpToSeq: Number(row.read_up_to_seq),
          deliveredMovedAt: optionalDate(row.delivered_moved_at),
          readMovedAt: optionalDate(row.read_moved_at),
        });
      }
      return states;
    },

    async messageReceipts({ conversationId, messageId, now }) {
      const message = retainedMessage(conversationId, messageId, now);
      if (message === undefined) return undefined;
      const recipients = (q.messageRecipients.all(conversationId, message.seq) as Row[]).map(
        (row): MessageRecipientState => ({
          userId: String(row.user_id),
          deliveredAt: optionalDate(row.delivered_at),
          readAt: optionalDate(row.read_at),
        }),
      );
      return { message, recipients };
    },

    async findMessageForDevice({ conversationId, messageId, device, now }) {
      const message = retainedMessage(conversationId, messageId, now);
      if (message === undefined) return undefined;
      const target = q.target.get(conversationId, message.seq, device.userId, device.deviceId);
      return { message, addressed: target !== undefined };
    },

    async dropDevice({ device, removedAt }) {
      const at = removedAt.getTime();
      return inTransaction(db, () => {
        q.markRemoved.run(device.userId, device.deviceId, at, at);
        return Number(q.dropInbox.run(device.userId, device.deviceId, at).changes);
      });
    },

    async appendEvents(events) {
      if (events.length === 0) return;
      inTransaction(db, () => {
        for (const event of events) outbox.append(event);
      });
    },

    async sweepExpired(now) {
      const at = now.getTime();
      let removed = 0;
      for (;;) {
        const { messages, rows } = inTransaction(db, () => {
          let rows = 0;
          const expired = q.expiredMessages.all(at, SWEEP_CHUNK) as Row[];
          for (const row of expired) {
            rows += Number(q.deleteTargets.run(String(row.conversation_id), Number(row.seq)).changes);
            rows += Number(q.deleteRecipients.run(String(row.conversation_id), Number(row.seq)).changes);
            rows += Number(q.deleteMessage.run(String(row.conversation_id), Number(row.seq)).changes);
          }
          return { messages: expired.length, rows };
        });
        removed += rows;
        if (messages < SWEEP_CHUNK) break;
        await yieldToEventLoop();
      }
      for (;;) {
        const rows = inTransaction(db, () => Number(q.deleteExpiredInbox.run(at, SWEEP_CHUNK).changes));
        removed += rows;
        if (rows < SWEEP_CHUNK) break;
        await yieldToEventLoop();
      }
      return removed;
    },

    close() {
      groupCommit.flushNow();
      if (ownsDb) db.close();
    },
  };
}

function statements(db: DatabaseSync) {
  const messageColumns = `m.conversation_id, m.seq, m.message_id, m.sender_user_id, m.sender_device_id,
    m.client_message_id, m.kind, m.shared_ciphertext, m.accepted_at, m.expires_at, m.traceparent, m.force_trace`;
  const pending = (column: "delivered_at" | "read_at") => ({
    /** Unacknowledged rows of a user in (watermark, upTo], with their messages. */
    range: db.prepare(
      `SELECT r.seq, m.message_id, m.sender_user_id FROM history_message_recipients r
       JOIN history_messages m ON m.conversation_id = r.conversation_id AND m.seq = r.seq
       WHERE r.conversation_id = ? AND r.user_id = ? AND r.seq > ? AND r.seq <= ? AND r.expires_at > ?
         AND r.${column} IS NULL
       ORDER BY r.seq`,
    ),
    one: db.prepare(
      `SELECT seq FROM history_message_recipients
       WHERE conversation_id = ? AND user_id = ? AND seq = ? AND ${column} IS NULL`,
    ),
    first: db.prepare(
      `SELECT MIN(seq) AS seq FROM history_message_recipients
       WHERE conversation_id = ? AND user_id = ? AND seq > ? AND expires_at > ? AND ${column} IS NULL`,
    ),
  });
  /** A conversation's retained messages in a seq range, with one device's ciphertext. */
  const messagesInRange = (direction: "ASC" | "DESC") =>
    db.prepare(
      `SELECT ${messageColumns}, t.ciphertext AS device_ciphertext
       FROM history_messages m
       LEFT JOIN history_message_targets t ON t.conversation_id = m.conversation_id AND t.seq = m.seq
         AND t.user_id = ? AND t.device_id = ?
       WHERE m.conversation_id = ? AND m.seq > ? AND m.seq < ? AND m.expires_at > ?
       ORDER BY m.seq ${direction}
       LIMIT ?`,
    );
  return {
    bumpSeq: db.prepare(
      `INSERT INTO history_conversations (conversation_id, last_seq) VALUES (?, 1)
       ON CONFLICT (conversation_id) DO UPDATE SET last_seq = last_seq + 1
       RETURNING last_seq`,
    ),
    lastSeq: db.prepare("SELECT last_seq FROM history_conversations WHERE conversation_id = ?"),
    bumpPosition: db.prepare(
      `INSERT INTO history_devices (user_id, device_id, last_position, last_seen_at) VALUES (?, ?, 1, ?)
       ON CONFLICT (user_id, device_id) DO UPDATE SET last_position = last_position + 1,
         last_seen_at = MAX(last_seen_at, ?)
       RETURNING last_position`,
    ),
    touchDevice: db.prepare(
      `INSERT INTO history_devices (user_id, device_id, last_position, last_seen_at) VALUES (?, ?, 0, ?)
       ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_at = MAX(last_seen_at, ?)`,
    ),
    lastPosition: db.prepare("SELECT last_position FROM history_devices WHERE user_id = ? AND device_id = ?"),
    // A removed device counts again once seen after its removal (registered anew).
    knownDevices: db.prepare(
      `SELECT device_id, last_seen_at FROM history_devices
       WHERE user_id = ? AND last_seen_at >= ? AND (removed_at IS NULL OR last_seen_at > removed_at)
       ORDER BY device_id`,
    ),
    removedAt: db.prepare("SELECT removed_at FROM history_devices WHERE user_id = ? AND device_id = ?"),
    markRemoved: db.prepare(
      `INSERT INTO history_devices (user_id, device_id, last_position, last_seen_at, removed_at) VALUES (?, ?, 0, 0, ?)
       ON CONFLICT (user_id, device_id) DO UPDATE SET removed_at = MAX(COALESCE(removed_at, 0), ?)`,
    ),
    // Receipts and messages accepted up to the removal (or no longer stored) go; later ones stay.
    dropInbox: db.prepare(
      `DELETE FROM history_inbox AS i
       WHERE i.user_id = ? AND i.device_id = ? AND NOT EXISTS (
         SELECT 1 FROM history_messages m
         WHERE i.seq IS NOT NULL AND m.conversation_id = i.conversation_id AND m.seq = i.seq AND m.accepted_at > ?)`,
    ),
    messageById: db.prepare(`SELECT ${messageColumns} FROM history_messages m WHERE m.message_id = ?`),
    messageByClientId: db.prepare(
      `SELECT message_id, seq FROM history_messages
       WHERE sender_user_id = ? AND sender_device_id = ? AND client_message_id = ?`,
    ),
    insertMessage: db.prepare(
      `INSERT INTO history_messages (conversation_id, seq, message_id, sender_user_id, sender_device_id,
         client_message_id, kind, shared_ciphertext, accepted_at, stored_at, expires_at, membership_version,
         traceparent, force_trace)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    insertTarget: db.prepare(
      `INSERT INTO history_message_targets (conversation_id, seq, user_id, device_id, position, ciphertext)
       VALUES (?, ?, ?, ?, ?, ?)`,
    ),
    target: db.prepare(
      `SELECT position FROM history_message_targets
       WHERE conversation_id = ? AND seq = ? AND user_id = ? AND device_id = ?`,
    ),
    insertRecipient: db.prepare(
      `INSERT INTO history_message_recipients (conversation_id, user_id, seq, expires_at) VALUES (?, ?, ?, ?)`,
    ),
    insertInboxMessage: db.prepare(
      `INSERT INTO history_inbox (user_id, device_id, position, conversation_id, seq, expires_at)
       VALUES (?, ?, ?, ?, ?, ?)`,
    ),
    placeInboxReceipt: db.prepare(
      `INSERT INTO history_inbox (user_id, device_id, position, conversation_id, receipt_key, receipt, expires_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (user_id, device_id, conversation_id, receipt_key) WHERE receipt_key IS NOT NULL
       DO UPDATE SET position = excluded.position, receipt = excluded.receipt, expires_at = excluded.expires_at`,
    ),
    inboxReceipt: db.prepare(
      `SELECT position, receipt FROM history_inbox
       WHERE user_id = ? AND device_id = ? AND conversation_id = ? AND receipt_key = ?`,
    ),
    clearInboxUpTo: db.prepare(
      `DELETE FROM history_inbox
       WHERE user_id = ? AND device_id = ? AND conversation_id = ? AND seq IS NOT NULL AND seq <= ?`,
    ),
    clearInboxMessage: db.prepare(
      `DELETE FROM history_inbox
       WHERE user_id = ? AND device_id = ? AND conversation_id = ? AND seq IS NOT NULL AND seq = ?`,
    ),
    inbox: db.prepare(
      `SELECT i.position, i.seq, i.receipt, ${messageColumns}, t.ciphertext AS device_ciphertext
       FROM history_inbox i
       LEFT JOIN history_messages m ON i.seq IS NOT NULL AND m.conversation_id = i.conversation_id AND m.seq = i.seq
       LEFT JOIN history_message_targets t ON t.conversation_id = i.conversation_id AND t.seq = i.seq
         AND t.user_id = i.user_id AND t.device_id = i.device_id
       WHERE i.user_id = ? AND i.device_id = ? AND i.position > ? AND i.expires_at > ?
         AND (i.seq IS NULL OR (m.message_id IS NOT NULL AND m.expires_at > ?))
       ORDER BY i.position
       LIMIT ?`,
    ),
    // Message rows leave the inbox when acknowledged; receipts never need an ack.
    oldestMessageInInbox: db.prepare(
      `SELECT MIN(position) AS position FROM history_inbox
       WHERE user_id = ? AND device_id = ? AND seq IS NOT NULL AND expires_at > ?`,
    ),
    messagesOldestFirst: messagesInRange("ASC"),
    messagesNewestFirst: messagesInRange("DESC"),
    pendingDelivered: pending("delivered_at"),
    pendingRead: pending("read_at"),
    markDelivered: db.prepare(
      `UPDATE history_message_recipients SET delivered_at = ?
       WHERE conversation_id = ? AND user_id = ? AND seq = ? AND delivered_at IS NULL`,
    ),
    markRead: db.prepare(
      `UPDATE history_message_recipients SET read_at = ?, delivered_at = COALESCE(delivered_at, ?)
       WHERE conversation_id = ? AND user_id = ? AND seq = ? AND read_at IS NULL`,
    ),
    receiptState: db.prepare(
      `SELECT delivered_up_to_seq, read_up_to_seq, delivered_moved_at, read_moved_at
       FROM history_receipt_states WHERE conversation_id = ? AND user_id = ?`,
    ),
    upsertReceiptState: db.prepare(
      `INSERT INTO history_receipt_states (conversation_id, user_id, delivered_up_to_seq, read_up_to_seq,
         delivered_moved_at, read_moved_at)
       VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (conversation_id, user_id) DO UPDATE SET
         delivered_up_to_seq = excluded.delivered_up_to_seq, read_up_to_seq = excluded.read_up_to_seq,
         delivered_moved_at = excluded.delivered_moved_at, read_moved_at = excluded.read_moved_at`,
    ),
    messageRecipients: db.prepare(
      `SELECT user_id, delivered_at, read_at FROM history_message_recipients
       WHERE conversation_id = ? AND seq = ? ORDER BY user_id`,
    ),
    expiredMessages: db.prepare(
      "SELECT conversation_id, seq FROM history_messages WHERE expires_at <= ? LIMIT ?",
    ),
    deleteTargets: db.prepare("DELETE FROM history_message_targets WHERE conversation_id = ? AND seq = ?"),
    deleteRecipients: db.prepare(
      "DELETE FROM history_message_recipients WHERE conversation_id = ? AND seq = ?",
    ),
    deleteMessage: db.prepare("DELETE FROM history_messages WHERE conversation_id = ? AND seq = ?"),
    deleteExpiredInbox: db.prepare(
      `DELETE FROM history_inbox WHERE (user_id, device_id, position) IN
         (SELECT user_id, device_id, position FROM history_inbox WHERE expires_at <= ? LIMIT ?)`,
    ),
  };
}

/** Lets RPCs run between sweep chunks (node:sqlite is synchronous). */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function toMessage(row: Row): StoredMessage {
  return {
    messageId: String(row.message_id),
    conversationId: String(row.conversation_id),
    seq: Number(row.seq),
    sender: { userId: String(row.sender_user_id), deviceId: String(row.sender_device_id) },
    clientMessageId: String(row.client_message_id),
    kind: Number(row.kind),
    sharedCiphertext:
      row.shared_ciphertext === null || row.shared_ciphertext === undefined
        ? undefined
        : bytes(row.shared_ciphertext),
    acceptedAt: new Date(Number(row.accepted_at)),
    traceparent: String(row.traceparent),
    forceTrace: Number(row.force_trace) === 1,
  };
}

function toDeviceMessage(row: Row): DeviceMessage {
  const message = toMessage(row);
  const ciphertext = message.sharedCiphertext ?? bytes(row.device_ciphertext);
  return { ...message, ciphertext };
}

function bytes(value: SQLOutputValue | undefined): Uint8Array {
  return value instanceof Uint8Array ? value : new Uint8Array();
}

function optionalDate(value: SQLOutputValue | undefined): Date | undefined {
  return value === null || value === undefined ? undefined : new Date(Number(value));
}

/** Inbox receipts as JSON (times in unix ms). */
function serializeReceipt(receipt: ReceiptRecord): string {
  return JSON.stringify({
    c: receipt.conversationId,
    u: receipt.reader.userId,
    d: receipt.reader.deviceId,
    k: receipt.kind,
    s: receipt.upToSeq,
    i: receipt.messageIds.map((id) => [id.messageId, id.seq]),
    a: receipt.at.getTime(),
  });
}

function parseReceipt(text: string): ReceiptRecord {
  const r = JSON.parse(text) as {
    c: string;
    u: string;
    d: string;
    k: "delivered" | "read";
    s: number;
    i: [string, number][];
    a: number;
  };
  return {
    conversationId: r.c,
    reader: { userId: r.u, deviceId: r.d },
    kind: r.k,
    upToSeq: r.s,
    messageIds: r.i.map(([messageId, seq]) => ({ messageId, seq })),
    at: new Date(r.a),
  };
}
