/**
 * Receipts on Cassandra: recording one (HistoryStore.recordReceipt) and reading receipt state.
 *
 * One lightweight transaction on the member's state row moves the watermarks, bumps its version
 * and stores the pending receipt (what it marks, the reader's inbox items to clear, the receipt
 * and its event, whom to tell); the effects follow, each idempotent, and the pending receipt is
 * cleared (IF version = v). The member's next receipt finishes a pending one first (after
 * `takeOverAfterMs`), so receipts of one member apply in order; other members never contend.
 */
import type cassandra from "cassandra-driver";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import type { RecordedReceipt, RecordReceiptInput, RecordReceiptResult } from "../../domain/history-store.ts";
import type { MemberReceiptState, MessageRecipientState, ReceiptRecord } from "../../domain/model.ts";
import { sameDevice } from "../../domain/model.ts";
import { advanceWatermark, notifyUserIds, receiptKey } from "../../domain/receipts.ts";
import type { PendingReceipt, ReceiptMarks } from "./codec.ts";
import {
  decodePendingReceipt,
  encodePendingReceipt,
  optionalDate,
  optionalNumber,
  toNumber,
  ttlSeconds,
} from "./codec.ts";
import type { StoreContext } from "./context.ts";
import { STEP_DEADLINE_MS } from "./context.ts";
import {
  applyToPartition,
  backoff,
  CONDITIONAL,
  chunked,
  createKeyedSerializer,
  IDEMPOTENT,
  isUncertainWrite,
  mapLimit,
  rowsOf,
  UNSET,
} from "./cql.ts";
import type { InboxClear } from "./inbox.ts";
import { finishedSeq } from "./messages.ts";

interface ReceiptStateRow {
  /** null when the member has no row yet. */
  readonly version: number | null;
  readonly delivered: number;
  readonly read: number;
  readonly deliveredMovedAt: Date | undefined;
  readonly readMovedAt: Date | undefined;
  readonly pending: string | undefined;
}

interface RecipientRow {
  readonly seq: number;
  readonly messageId: string;
  readonly senderUserId: string;
  readonly expiresAt: Date;
  readonly deliveredAt: Date | undefined;
  readonly readAt: Date | undefined;
}

/** Rows read per page by scans. */
const SCAN_PAGE = 500;
/** Rows per batch when one partition receives many. */
const PARTITION_CHUNK = 100;

export function createReceipts(ctx: StoreContext) {
  const { client, tables: t, inboxes, devices, messages, outbox, concurrency, afterStep } = ctx;
  const recipientColumns = "seq, message_id, sender_user_id, expires_at, delivered_at, read_at";
  const q = {
    state: `SELECT version, delivered_up_to_seq, read_up_to_seq, delivered_moved_at, read_moved_at, pending
      FROM ${t.receiptStates} WHERE conversation_id = ? AND user_id = ?`,
    claim: `UPDATE ${t.receiptStates} SET delivered_up_to_seq = ?, read_up_to_seq = ?, delivered_moved_at = ?,
      read_moved_at = ?, version = ?, pending = ? WHERE conversation_id = ? AND user_id = ?
      IF version = ? AND pending = null`,
    release: `UPDATE ${t.receiptStates} SET pending = null WHERE conversation_id = ? AND user_id = ? IF version = ?`,
    recipientsAbove: `SELECT ${recipientColumns} FROM ${t.recipients}
      WHERE conversation_id = ? AND user_id = ? AND seq > ?`,
    recipientsBetween: `SELECT ${recipientColumns} FROM ${t.recipients}
      WHERE conversation_id = ? AND user_id = ? AND seq > ? AND seq <= ?`,
    recipientsIn: `SELECT ${recipientColumns} FROM ${t.recipients}
      WHERE conversation_id = ? AND user_id = ? AND seq IN ?`,
    markRecipient: `UPDATE ${t.recipients} USING TTL ? SET delivered_at = ?, read_at = ?
      WHERE conversation_id = ? AND user_id = ? AND seq = ?`,
    markMessageRecipient: `UPDATE ${t.messageRecipients} USING TTL ? SET delivered_at = ?, read_at = ?
      WHERE conversation_id = ? AND seq = ? AND user_id = ?`,
    messageRecipients: `SELECT user_id, delivered_at, read_at FROM ${t.messageRecipients}
      WHERE conversation_id = ? AND seq = ?`,
  };
  const run = (query: string, params: unknown[]) => client.execute(query, params, IDEMPOTENT);

  const stateOf = (row: cassandra.types.Row | null): ReceiptStateRow => ({
    version: row === null ? null : (optionalNumber(row.get("version")) ?? null),
    delivered: row === null ? 0 : toNumber(row.get("delivered_up_to_seq")),
    read: row === null ? 0 : toNumber(row.get("read_up_to_seq")),
    deliveredMovedAt: row === null ? undefined : optionalDate(row.get("delivered_moved_at")),
    readMovedAt: row === null ? undefined : optionalDate(row.get("read_moved_at")),
    pending: row === null ? undefined : ((row.get("pending") as string | null) ?? undefined),
  });
  const readState = async (conversationId: string, userId: string) =>
    stateOf((await run(q.state, [conversationId, userId])).first());

  const recipientOf = (row: cassandra.types.Row): RecipientRow => ({
    seq: toNumber(row.get("seq")),
    messageId: String(row.get("message_id")),
    senderUserId: String(row.get("sender_user_id")),
    expiresAt: row.get("expires_at") as Date,
    deliveredAt: optionalDate(row.get("delivered_at")),
    readAt: optionalDate(row.get("read_at")),
  });

  /** The user's retained receipt rows that `marks` names, by seq. */
  async function markedRows(
    conversationId: string,
    userId: string,
    marks: ReceiptMarks,
    now: Date,
  ): Promise<RecipientRow[]> {
    const rows: RecipientRow[] = [];
    if ("seqs" in marks) {
      if (marks.seqs.length === 0) return rows;
      const result = await run(q.recipientsIn, [conversationId, userId, [...marks.seqs]]);
      rows.push(...result.rows.map(recipientOf));
    } else {
      if (marks.upTo <= marks.after) return rows;
      const params = [conversationId, userId, marks.after, marks.upTo];
      for await (const row of rowsOf(client, q.recipientsBetween, params, SCAN_PAGE))
        rows.push(recipientOf(row));
    }
    return rows.filter((r) => r.expiresAt.getTime() > now.getTime()).sort((a, b) => a.seq - b.seq);
  }

  /** The lowest retained seq above `above` the user has not acknowledged (`column`), `marked` aside. */
  async function firstUnacknowledged(
    conversationId: string,
    userId: string,
    column: "deliveredAt" | "readAt",
    above: number,
    now: Date,
    marked: ReadonlySet<number>,
  ): Promise<number | undefined> {
    for await (const row of rowsOf(client, q.recipientsAbove, [conversationId, userId, above], SCAN_PAGE)) {
      const r = recipientOf(row);
      if (r.expiresAt.getTime() <= now.getTime() || marked.has(r.seq)) continue;
      if (r[column] === undefined) return r.seq;
    }
    return undefined;
  }

  /** The seqs of the retained messages of the conversation among `messageIds`. */
  async function retainedSeqs(conversationId: string, messageIds: readonly string[], now: Date) {
    const located = await mapLimit([...new Set(messageIds)], concurrency, messages.locate);
    const seqs = located.flatMap((where) =>
      where !== undefined && where.conversationId === conversationId ? [where.seq] : [],
    );
    const found = await messages.load(
      seqs.map((seq) => ({ conversationId, seq })),
      now,
    );
    return seqs.filter((seq) => found.has(`${conversationId}/${seq}`)).sort((a, b) => a - b);
  }

  async function finish(conversationId: string, userId: string, p: PendingReceipt): Promise<void> {
    // 1. The marks: per message first, then per user, so a repeat recomputes from the per-user
    // rows and writes both again until the per-user row says it is done.
    const rows = await markedRows(conversationId, userId, p.marks, p.now);
    const marks = rows
      .filter((r) => (p.kind === "read" ? r.readAt : r.deliveredAt) === undefined)
      .map((r) => ({
        seq: r.seq,
        ttl: ttlSeconds(r.expiresAt, p.now),
        delivered: r.deliveredAt ?? p.at,
        read: p.kind === "read" ? p.at : (r.readAt ?? UNSET),
      }));
    await mapLimit(marks, concurrency, (mark) =>
      run(q.markMessageRecipient, [mark.ttl, mark.delivered, mark.read, conversationId, mark.seq, userId]),
    );
    await chunked(marks, PARTITION_CHUNK, (chunk) =>
      applyToPartition(
        client,
        chunk.map((mark) => ({
          query: q.markRecipient,
          params: [mark.ttl, mark.delivered, mark.read, conversationId, userId, mark.seq],
        })),
      ),
    );
    afterStep("receipt:marked");

    // 2. Out of the reader device's inbox.
    await Promise.all([inboxes.clear(p.reader, conversationId, p.clear), devices.seen(p.reader, p.now)]);
    afterStep("receipt:cleared");

    // 3. Into the inboxes of the devices it concerns.
    const known = await mapLimit(p.notifyUserIds, concurrency, (notified) =>
      devices.known(notified, p.devicesSeenSince),
    );
    const placement = {
      receipt: p.receipt,
      key: receiptKey(p.receipt),
      version: p.version,
      expiresAt: p.receiptExpiresAt,
      ttl: ttlSeconds(p.receiptExpiresAt, p.now),
    };
    const targets = known.flat().filter((device) => !sameDevice(device, p.reader));
    await mapLimit(targets, concurrency, (device) => inboxes.placeReceipt(device, placement));
    afterStep("receipt:placed");

    // 4. The event.
    if (p.event !== undefined) {
      const statement = outbox.appendStatement(p.event);
      await run(statement.query, statement.params);
    }
    afterStep("receipt:published");

    // 5. Finished: the member's next receipt may go.
    for (let attempt = 0; ; attempt++) {
      try {
        await client.execute(q.release, [conversationId, userId, p.version], CONDITIONAL);
        return;
      } catch (err) {
        if (!isUncertainWrite(err) || attempt >= 5) throw err;
        await backoff(attempt);
      }
    }
  }

  /** Waits while a receipt of the member is pending, finishing one left for `takeOverAfterMs`. */
  async function settle(conversationId: string, userId: string, seen: ReceiptStateRow): Promise<void> {
    let current = seen;
    let watching: string | undefined;
    let since = 0;
    for (let attempt = 0; current.pending !== undefined; attempt++) {
      if (current.pending !== watching) {
        watching = current.pending;
        since = Date.now();
      }
      if (Date.now() - since >= ctx.takeOverAfterMs) {
        await finish(conversationId, userId, decodePendingReceipt(current.pending));
        since = Date.now();
      } else {
        await backoff(attempt);
      }
      current = await readState(conversationId, userId);
    }
  }

  // One member's receipts in a conversation take turns in this process: a device acking several
  // messages at once would otherwise race for the member's state row (see createKeyedSerializer).
  const inTurn = createKeyedSerializer();

  function recordReceipt(
    input: RecordReceiptInput,
    event: (recorded: RecordedReceipt) => OutboxEvent | undefined,
  ): Promise<RecordReceiptResult> {
    return inTurn(`${input.conversationId}/${input.reader.userId}`, () => recordReceiptNow(input, event));
  }

  async function recordReceiptNow(
    input: RecordReceiptInput,
    event: (recorded: RecordedReceipt) => OutboxEvent | undefined,
  ): Promise<RecordReceiptResult> {
    const { conversationId, reader, kind, now } = input;
    const userId = reader.userId;
    const deadline = Date.now() + STEP_DEADLINE_MS;
    while (Date.now() < deadline) {
      const state = await readState(conversationId, userId);
      if (state.pending !== undefined) {
        await settle(conversationId, userId, state);
        continue;
      }
      const last = finishedSeq(await messages.conversation(conversationId));
      const watermark = kind === "read" ? state.read : state.delivered;
      const column = kind === "read" ? "readAt" : "deliveredAt";

      // 1. The messages it names, and which of them are newly acknowledged.
      let ackedUpTo = 0;
      let marks: ReceiptMarks;
      let clear: InboxClear;
      if ("upToSeq" in input.target) {
        ackedUpTo = Math.max(0, Math.min(input.target.upToSeq, last));
        marks = { after: watermark, upTo: ackedUpTo };
        clear = { upToSeq: ackedUpTo };
      } else {
        const seqs = await retainedSeqs(conversationId, input.target.messageIds, now);
        marks = { seqs };
        clear = { seqs };
      }
      const named = await markedRows(conversationId, userId, marks, now);
      const newly = named.filter((r) => r[column] === undefined);
      const marked = new Set(newly.map((r) => r.seq));

      // 2. The watermarks: the first seq still unacknowledged above each decides how far it may go.
      const firstDelivered = await firstUnacknowledged(
        conversationId,
        userId,
        "deliveredAt",
        Math.max(state.delivered, ackedUpTo),
        now,
        marked,
      );
      const delivered = advanceWatermark(state.delivered, ackedUpTo, firstDelivered, last);
      let read = state.read;
      if (kind === "read") {
        const above = Math.max(state.read, ackedUpTo);
        const firstRead = await firstUnacknowledged(conversationId, userId, "readAt", above, now, marked);
        read = advanceWatermark(state.read, ackedUpTo, firstRead, last);
      }
      const after = { deliveredUpToSeq: delivered, readUpToSeq: read };
      if (newly.length === 0 && delivered === state.delivered && read === state.read) {
        await Promise.all([inboxes.clear(reader, conversationId, clear), devices.seen(reader, now)]);
        return { recorded: false, state: after, receipt: undefined };
      }

      // 3. What it tells whom, built before anything is written: a throwing `event` leaves no trace.
      const receipt: ReceiptRecord = {
        conversationId,
        reader,
        kind,
        upToSeq: kind === "read" ? read : delivered,
        messageIds:
          "messageIds" in input.target ? newly.map((r) => ({ messageId: r.messageId, seq: r.seq })) : [],
        at: input.at,
      };
      const recorded: RecordedReceipt = {
        receipt,
        notifyUserIds: notifyUserIds(
          kind,
          userId,
          newly.map((r) => r.senderUserId),
        ),
      };
      const pending: PendingReceipt = {
        version: (state.version ?? 0) + 1,
        conversationId,
        reader,
        kind,
        at: input.at,
        now,
        marks,
        clear,
        receipt,
        notifyUserIds: recorded.notifyUserIds,
        event: event(recorded),
        receiptExpiresAt: input.receiptExpiresAt,
        devicesSeenSince: input.devicesSeenSince,
      };

      // 4. Claimed with the new watermarks, then applied.
      const encoded = encodePendingReceipt(pending);
      const params = [
        delivered,
        read,
        delivered !== state.delivered ? input.at : UNSET,
        read !== state.read ? input.at : UNSET,
        pending.version,
        encoded,
        conversationId,
        userId,
        state.version,
      ];
      let claimed: boolean;
      try {
        claimed = (await client.execute(q.claim, params, CONDITIONAL)).wasApplied();
      } catch (err) {
        if (!isUncertainWrite(err)) throw err;
        claimed = (await readState(conversationId, userId)).pending === encoded;
      }
      // Another receipt of the member came first: decide again over what it changed.
      if (!claimed) continue;
      afterStep("receipt:claimed");
      await finish(conversationId, userId, pending);
      return { recorded: true, state: after, receipt: recorded };
    }
    throw new Error(`history: could not record a receipt of ${userId} in ${conversationId}: it stayed busy`);
  }

  return {
    recordReceipt,

    async states(conversationId: string, userIds: readonly string[]) {
      const rows = await mapLimit(userIds, concurrency, (userId) => readState(conversationId, userId));
      const states = new Map<string, MemberReceiptState>();
      userIds.forEach((userId, i) => {
        const row = rows[i] as ReceiptStateRow;
        if (row.version === null) return;
        states.set(userId, {
          userId,
          deliveredUpToSeq: row.delivered,
          readUpToSeq: row.read,
          deliveredMovedAt: row.deliveredMovedAt,
          readMovedAt: row.readMovedAt,
        });
      });
      return states;
    },

    /** When each recipient user got and read one message. */
    async ofMessage(conversationId: string, seq: number): Promise<MessageRecipientState[]> {
      const rows = await run(q.messageRecipients, [conversationId, seq]);
      return rows.rows.map((row) => ({
        userId: String(row.get("user_id")),
        deliveredAt: optionalDate(row.get("delivered_at")),
        readAt: optionalDate(row.get("read_at")),
      }));
    },
  };
}
