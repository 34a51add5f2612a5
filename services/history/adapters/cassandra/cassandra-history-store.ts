/**
 * The cluster HistoryStore on Cassandra.
 *
 * Where things live (schema.ts): messages once per conversation in partitions of a fixed seq range
 * ((conversation, bucket), seq), so a seq finds its partition without a lookup and a partition
 * never exceeds `messagesPerBucket` rows; a per-conversation directory of the buckets still
 * retained, so listing skips expired ranges in one read; one inbox partition per device (items,
 * their placement records with the device's pairwise ciphertexts, the position counter); receipt
 * marks per recipient user and per message; watermarks per member. Retention is Cassandra's TTL,
 * set on each write from the domain's expiry (accepted_at + retention) and the time of the write,
 * so `sweepExpired` has nothing to do; reads still hide rows whose expiry passed at `now`.
 *
 * Storing a message: a lightweight transaction (LWT) on the conversation's row takes the next seq
 * and marks the message as the conversation's pending step in one go
 * (`SET last_seq = n + 1, pending_message_id = M IF last_seq = n AND pending_message_id = null`).
 * The step's input was staged (keyed by message id) before, so anyone can finish it:
 *   1. plain, idempotent writes: the message, its bucket, its receipt rows, then its dedup keys;
 *   2. one conditional batch per target device (inbox.ts): placed exactly once, at a position;
 *   3. the MessageStored events, into the outbox;
 *   4. `SET pending_message_id = null IF pending_message_id = M`.
 * A crash anywhere leaves the step pending; the redelivered message (or the next message of the
 * conversation) finds it and finishes it, repeating what was done (at worst an event is published
 * twice), and nothing else of the conversation is stored meanwhile. So the seq is taken once,
 * contiguously, and the inbox items and events of a claimed message are never lost.
 * Deduplication checks the dedup keys after reading the conversation row with no step pending:
 * the keys of every earlier message exist by then, and a message claimed after that read moves
 * last_seq, so the LWT fails and the loop starts over. A dedup key found for a step still pending
 * means that step is finished before answering `duplicate`.
 * Logged batches are not used for the effects: a 1,000-member group's message touches thousands of
 * partitions and pairwise ciphertexts pass the batch size limit, and the pending step already
 * gives all-or-(eventually)-all.
 *
 * What readers see of a step under way: the conversation's last seq (lastSeqs, ListMessages,
 * receipts) counts only finished steps, so a gap a client sees can always be filled, and
 * watermarks only cover finished messages; inbox items appear device by device as they are placed,
 * each with its message already written.
 *
 * Recording a receipt works the same way on the member's receipt state row: one LWT moves the
 * watermarks, bumps a version and stores the pending receipt (its marks, the event, whom to tell);
 * its effects follow (marks, the reader's inbox, receipt items, the event) and the pending receipt
 * is cleared. Receipts of one member serialize there; other members never contend.
 *
 * A step someone else left pending is waited for up to `takeOverAfterMs`, then finished here: its
 * writer may just be slow, and two writers finishing one step only repeat idempotent work.
 * `events` may therefore be called for another message of the conversation, and more than once for
 * one (first with the positions it will most likely get, before anything is written, so a throwing
 * `events` stores nothing): it must depend on its argument only, as the port says.
 *
 * Files: store-message.ts (storing), receipts.ts (receipts), inbox.ts (device inboxes),
 * messages.ts (conversation and message reads), devices.ts (devices seen and removed), schema.ts,
 * codec.ts (column values), cql.ts (consistency levels and helpers).
 */
import { applyMigrations } from "../../../../lib/cassandra/migrations.ts";
import { createCassandraOutbox } from "../../../../lib/cassandra/outbox.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type { HistoryStore } from "../../domain/history-store.ts";
import type { DeviceMessage, DeviceRef, InboxItem, StoredMessage } from "../../domain/model.ts";
import type { CommitStep, StoreContext } from "./context.ts";
import type { Statement } from "./cql.ts";
import { applyToPartition, mapLimit } from "./cql.ts";
import { createDeviceDirectory } from "./devices.ts";
import type { StoredInboxItem } from "./inbox.ts";
import { createDeviceInboxes } from "./inbox.ts";
import { createMessageReads, finishedSeq } from "./messages.ts";
import { createReceipts } from "./receipts.ts";
import { historyMigrations, historyTables } from "./schema.ts";
import { createStoreMessage } from "./store-message.ts";

export type { CommitStep } from "./context.ts";

export interface CassandraHistoryStoreOptions {
  /** A client bound to the keyspace (lib/cassandra/session.ts); the caller shuts it down. */
  readonly client: CassandraClient;
  readonly logger: Logger;
  /** Before every table name, so several stores can share one keyspace (tests). Default none. */
  readonly tablePrefix?: string;
  /** Messages per partition of a conversation. Default 1,000 (at most ~4.5 MiB of shared ciphertext). */
  readonly messagesPerBucket?: number;
  /** How long a step another writer left pending is waited for before it is finished here. Default 1 s. */
  readonly takeOverAfterMs?: number;
  /** Devices (or users) written concurrently while a message or a receipt fans out. Default 32. */
  readonly fanOutConcurrency?: number;
  /** Fault tests: called after each durable step; throwing there stops the change as a crash would. */
  readonly afterStep?: (step: CommitStep) => void;
}

export const DEFAULT_MESSAGES_PER_BUCKET = 1000;

/** Applies the history migrations to the client's keyspace and returns the store. */
export async function createCassandraHistoryStore(
  options: CassandraHistoryStoreOptions,
): Promise<HistoryStore> {
  const { client, logger } = options;
  const prefix = options.tablePrefix ?? "";
  const tables = historyTables(prefix);
  const messagesPerBucket = options.messagesPerBucket ?? DEFAULT_MESSAGES_PER_BUCKET;
  if (!Number.isInteger(messagesPerBucket) || messagesPerBucket < 1) {
    throw new Error("messagesPerBucket must be a positive integer");
  }
  await applyMigrations(
    client,
    prefix === "" ? "history" : `history_${prefix}`,
    historyMigrations(tables),
    logger,
  );
  const concurrency = options.fanOutConcurrency ?? 32;
  const ctx: StoreContext = {
    client,
    tables,
    logger,
    outbox: createCassandraOutbox(client, tables.outbox),
    inboxes: createDeviceInboxes(client, tables),
    devices: createDeviceDirectory(client, tables),
    messages: createMessageReads(client, tables, { messagesPerBucket, concurrency }),
    concurrency,
    takeOverAfterMs: options.takeOverAfterMs ?? 1000,
    afterStep: options.afterStep ?? (() => undefined),
  };
  const { inboxes, messages, outbox } = ctx;
  const receipts = createReceipts(ctx);

  /** The messages as `device` receives them: the shared ciphertext or the device's own. */
  async function forDevice(device: DeviceRef, found: readonly StoredMessage[]): Promise<DeviceMessage[]> {
    const pairwise = new Map<string, number[]>();
    for (const m of found) {
      if (m.sharedCiphertext !== undefined) continue;
      pairwise.set(m.conversationId, [...(pairwise.get(m.conversationId) ?? []), m.seq]);
    }
    const ciphertexts = new Map<string, Uint8Array>();
    await mapLimit([...pairwise], concurrency, async ([conversationId, seqs]) => {
      for (const [seq, ciphertext] of await inboxes.ciphertexts(device, conversationId, seqs)) {
        ciphertexts.set(`${conversationId}/${seq}`, ciphertext);
      }
    });
    return found.map((m) => ({
      ...m,
      ciphertext: m.sharedCiphertext ?? ciphertexts.get(`${m.conversationId}/${m.seq}`) ?? new Uint8Array(),
    }));
  }

  /** Stored inbox items as the port's (message items whose message expired are left out). */
  async function resolveItems(device: DeviceRef, stored: readonly StoredInboxItem[], now: Date) {
    const keys = stored.flatMap((i) =>
      i.seq === undefined ? [] : [{ conversationId: i.conversationId, seq: i.seq }],
    );
    const found = await forDevice(device, [...(await messages.load(keys, now)).values()]);
    const byKey = new Map(found.map((m) => [`${m.conversationId}/${m.seq}`, m]));
    return stored.flatMap((item): InboxItem[] => {
      if (item.receipt !== undefined)
        return [{ kind: "receipt", position: item.position, receipt: item.receipt }];
      const message = byKey.get(`${item.conversationId}/${item.seq}`);
      return message === undefined ? [] : [{ kind: "message", position: item.position, message }];
    });
  }

  return {
    outbox,
    storeMessage: createStoreMessage(ctx),
    recordReceipt: receipts.recordReceipt,

    async readInbox({ device, afterPosition, limit, now }) {
      const statics = inboxes.readStatics(device);
      // Awaited at the end; should reading the items fail first, its failure is not a second one.
      statics.catch(() => undefined);
      const items: InboxItem[] = [];
      const stored = inboxes.items(device, afterPosition, Math.min(1000, limit + 1));
      let exhausted = false;
      while (items.length <= limit && !exhausted) {
        const candidates: StoredInboxItem[] = [];
        while (candidates.length < limit + 1 - items.length) {
          const next = await stored.next();
          if (next.done === true) {
            exhausted = true;
            break;
          }
          if (next.value.expiresAt.getTime() > now.getTime()) candidates.push(next.value);
        }
        items.push(...(await resolveItems(device, candidates, now)));
      }
      await stored.return(undefined);
      return {
        items: items.slice(0, limit),
        more: items.length > limit,
        // The statics were read beside the items: a placement in between may have passed them.
        lastPosition: Math.max((await statics).lastPosition ?? 0, items.at(-1)?.position ?? 0),
      };
    },

    oldestUnacknowledgedPosition: (device, now) => inboxes.oldestUnacknowledged(device, now),

    async lastSeqs(conversationIds) {
      const states = await mapLimit(conversationIds, concurrency, messages.conversation);
      return new Map(
        conversationIds.map((id, i) => [id, states[i] === undefined ? 0 : finishedSeq(states[i])]),
      );
    },

    async listMessages({ conversationId, device, afterSeq, beforeSeq, order, limit, now }) {
      const last = finishedSeq(await messages.conversation(conversationId));
      const high = beforeSeq === 0 ? last : Math.min(beforeSeq - 1, last);
      const found = await messages.range(conversationId, afterSeq + 1, high, order, limit + 1, now);
      return {
        messages: await forDevice(device, found.slice(0, limit)),
        more: found.length > limit,
        lastSeq: last,
      };
    },

    receiptStates: (conversationId, userIds) => receipts.states(conversationId, userIds),

    async messageReceipts({ conversationId, messageId, now }) {
      const message = await messages.retained(conversationId, messageId, now);
      if (message === undefined) return undefined;
      return { message, recipients: await receipts.ofMessage(conversationId, message.seq) };
    },

    async findMessageForDevice({ conversationId, messageId, device, now }) {
      const message = await messages.retained(conversationId, messageId, now);
      if (message === undefined) return undefined;
      return { message, addressed: await inboxes.wasPlaced(device, conversationId, message.seq) };
    },

    async dropDevice({ device, removedAt }) {
      await inboxes.markRemoved(device, removedAt);
      await ctx.devices.removed(device, removedAt);
      return inboxes.drop(device, removedAt);
    },

    async appendEvents(events) {
      // One partition (the outbox's): all or none.
      await applyToPartition(
        client,
        events.map((event): Statement => outbox.appendStatement(event)),
      );
    },

    // Cassandra expires rows through their TTLs; reads hide what expired before.
    async sweepExpired() {
      return 0;
    },

    // The client belongs to the caller, who shuts it down.
    close() {},
  };
}
