/**
 * Reading conversations and their messages: the conversation's counter row and the messages in
 * their seq-range buckets (bucket = floor((seq - 1) / messagesPerBucket)).
 */
import type cassandra from "cassandra-driver";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import type { SeqOrder, StoredMessage } from "../../domain/model.ts";
import { bytesOf, optionalNumber, toNumber } from "./codec.ts";
import { IDEMPOTENT, mapLimit, rowsOf } from "./cql.ts";
import type { HistoryTables } from "./schema.ts";

export interface ConversationState {
  /** null when the conversation has no row yet. */
  readonly lastSeq: number | null;
  /** The message whose store step is under way (it holds `lastSeq`). */
  readonly pending: string | undefined;
  /** The token of the call that claimed the pending step. */
  readonly claim: string | undefined;
}

/** The last seq whose store step is finished: a pending step holds the last one. */
export function finishedSeq(c: ConversationState): number {
  return (c.lastSeq ?? 0) - (c.pending === undefined ? 0 : 1);
}

export type MessageReads = ReturnType<typeof createMessageReads>;

export function createMessageReads(
  client: CassandraClient,
  tables: HistoryTables,
  options: { readonly messagesPerBucket: number; readonly concurrency: number },
) {
  const t = tables;
  const columns = `conversation_id, seq, message_id, sender_user_id, sender_device_id, client_message_id,
    kind, shared_ciphertext, accepted_at, expires_at, traceparent, force_trace`;
  const q = {
    conversation: `SELECT last_seq, pending_message_id, pending_claim FROM ${t.conversations}
      WHERE conversation_id = ?`,
    messageId: `SELECT conversation_id, seq FROM ${t.messageIds} WHERE message_id = ?`,
    message: `SELECT ${columns} FROM ${t.messages} WHERE conversation_id = ? AND bucket = ? AND seq = ?`,
    messagesIn: `SELECT ${columns} FROM ${t.messages} WHERE conversation_id = ? AND bucket = ? AND seq IN ?`,
    ascending: `SELECT ${columns} FROM ${t.messages}
      WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq ASC`,
    descending: `SELECT ${columns} FROM ${t.messages}
      WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC`,
    buckets: `SELECT bucket FROM ${t.messageBuckets} WHERE conversation_id = ? AND bucket >= ? AND bucket <= ?`,
  };
  const run = (query: string, params: unknown[]) => client.execute(query, params, IDEMPOTENT);
  const bucketOf = (seq: number) => Math.floor((seq - 1) / options.messagesPerBucket);

  const toMessage = (row: cassandra.types.Row): StoredMessage => ({
    messageId: String(row.get("message_id")),
    conversationId: String(row.get("conversation_id")),
    seq: toNumber(row.get("seq")),
    sender: { userId: String(row.get("sender_user_id")), deviceId: String(row.get("sender_device_id")) },
    clientMessageId: String(row.get("client_message_id")),
    kind: toNumber(row.get("kind")),
    sharedCiphertext: bytesOf(row.get("shared_ciphertext")),
    acceptedAt: row.get("accepted_at") as Date,
    traceparent: String(row.get("traceparent") ?? ""),
    forceTrace: row.get("force_trace") === true,
  });
  const retained = (row: cassandra.types.Row, now: Date) =>
    (row.get("expires_at") as Date).getTime() > now.getTime();

  const conversationOf = (row: cassandra.types.Row | null): ConversationState => ({
    lastSeq: row === null ? null : (optionalNumber(row.get("last_seq")) ?? null),
    pending: row === null ? undefined : ((row.get("pending_message_id") as string | null) ?? undefined),
    claim: row === null ? undefined : ((row.get("pending_claim") as string | null) ?? undefined),
  });

  /** The retained messages among (conversation, seq) pairs, keyed `conversation/seq`. */
  async function load(
    keys: readonly { readonly conversationId: string; readonly seq: number }[],
    now: Date,
  ): Promise<Map<string, StoredMessage>> {
    const groups = new Map<string, { conversationId: string; bucket: number; seqs: Set<number> }>();
    for (const { conversationId, seq } of keys) {
      const bucket = bucketOf(seq);
      const id = `${conversationId}/${bucket}`;
      const group = groups.get(id) ?? { conversationId, bucket, seqs: new Set<number>() };
      group.seqs.add(seq);
      groups.set(id, group);
    }
    const found = new Map<string, StoredMessage>();
    await mapLimit([...groups.values()], options.concurrency, async (group) => {
      const rows = await run(q.messagesIn, [group.conversationId, group.bucket, [...group.seqs]]);
      for (const row of rows.rows) {
        if (!retained(row, now)) continue;
        const message = toMessage(row);
        found.set(`${message.conversationId}/${message.seq}`, message);
      }
    });
    return found;
  }

  /** Where a message id was stored: its conversation and seq. */
  async function locate(messageId: string) {
    const row = (await run(q.messageId, [messageId])).first();
    return row === null
      ? undefined
      : { conversationId: String(row.get("conversation_id")), seq: toNumber(row.get("seq")) };
  }

  return {
    bucketOf,
    conversationOf,
    load,
    locate,

    async conversation(conversationId: string): Promise<ConversationState> {
      return conversationOf((await run(q.conversation, [conversationId])).first());
    },

    /** A retained message of the conversation by id. */
    async retained(conversationId: string, messageId: string, now: Date): Promise<StoredMessage | undefined> {
      const where = await locate(messageId);
      if (where === undefined || where.conversationId !== conversationId) return undefined;
      const row = (await run(q.message, [conversationId, bucketOf(where.seq), where.seq])).first();
      return row === null || !retained(row, now) ? undefined : toMessage(row);
    },

    /**
     * Retained messages with `low <= seq <= high` in `order`, at most `limit`; read bucket by
     * bucket, only the buckets the directory still lists.
     */
    async range(
      conversationId: string,
      low: number,
      high: number,
      order: SeqOrder,
      limit: number,
      now: Date,
    ): Promise<StoredMessage[]> {
      const found: StoredMessage[] = [];
      if (low > high) return found;
      const listed = await run(q.buckets, [conversationId, bucketOf(low), bucketOf(high)]);
      const buckets = listed.rows.map((row) => toNumber(row.get("bucket")));
      if (order === "newest_first") buckets.reverse();
      const query = order === "newest_first" ? q.descending : q.ascending;
      for (const bucket of buckets) {
        if (found.length >= limit) break;
        const pageSize = Math.min(1000, limit - found.length);
        for await (const row of rowsOf(client, query, [conversationId, bucket, low, high], pageSize)) {
          if (!retained(row, now)) continue;
          found.push(toMessage(row));
          if (found.length >= limit) break;
        }
      }
      return found;
    },
  };
}
