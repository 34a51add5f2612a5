/**
 * Storing a message on Cassandra (HistoryStore.storeMessage): the seq is taken by a lightweight
 * transaction on the conversation's row that also makes the message the conversation's pending
 * step; the step's effects follow, each idempotent, and the step is released. See the header of
 * cassandra-history-store.ts for why this keeps seqs contiguous and nothing lost.
 */
import { randomUUID } from "node:crypto";
import cassandra from "cassandra-driver";
import type { OutboxEvent } from "../../../../lib/outbox.ts";
import type { AssignedMessage, StoreMessageInput, StoreMessageResult } from "../../domain/history-store.ts";
import type { DeviceRef, StoredMessage } from "../../domain/model.ts";
import { sameDevice } from "../../domain/model.ts";
import { decodeStep, encodeStep, toNumber, ttlSeconds, writeTimestamp } from "./codec.ts";
import type { StoreContext } from "./context.ts";
import { STEP_DEADLINE_MS } from "./context.ts";
import {
  applyToPartition,
  backoff,
  CONDITIONAL,
  chunked,
  IDEMPOTENT,
  isUncertainWrite,
  mapLimit,
  UNSET,
} from "./cql.ts";
import type { InboxStatics } from "./inbox.ts";
import type { ConversationState } from "./messages.ts";

type Events = (assigned: AssignedMessage) => readonly OutboxEvent[];

/** What planning a claim found: each target's inbox statics and the events it will most likely need. */
interface Plan {
  readonly statics: ReadonlyMap<string, InboxStatics>;
  readonly guess: { readonly targets: AssignedMessage["targets"]; readonly events: readonly OutboxEvent[] };
}

/** Rows per batch when one partition receives many. */
const PARTITION_CHUNK = 100;

const deviceKey = (device: DeviceRef) => `${device.userId}/${device.deviceId}`;

export function createStoreMessage(ctx: StoreContext) {
  const { client, tables: t, inboxes, devices, messages, outbox, concurrency, afterStep } = ctx;
  const q = {
    claim: `UPDATE ${t.conversations} SET last_seq = ?, pending_message_id = ?, pending_claim = ?
      WHERE conversation_id = ? IF last_seq = ? AND pending_message_id = null`,
    release: `UPDATE ${t.conversations} SET pending_message_id = null, pending_claim = null
      WHERE conversation_id = ? IF pending_message_id = ?`,
    stage: `INSERT INTO ${t.stagedMessages} (message_id, conversation_id, step) VALUES (?, ?, ?) USING TTL ?`,
    staged: `SELECT step FROM ${t.stagedMessages} WHERE message_id = ?`,
    unstage: `DELETE FROM ${t.stagedMessages} WHERE message_id = ?`,
    insertMessageId: `INSERT INTO ${t.messageIds} (message_id, conversation_id, seq) VALUES (?, ?, ?) USING TTL ?`,
    clientMessageId: `SELECT message_id, conversation_id, seq FROM ${t.clientMessageIds}
      WHERE sender_user_id = ? AND sender_device_id = ? AND client_message_id = ?`,
    insertClientMessageId: `INSERT INTO ${t.clientMessageIds} (sender_user_id, sender_device_id, client_message_id,
      message_id, conversation_id, seq) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?`,
    insertMessage: `INSERT INTO ${t.messages} (conversation_id, bucket, seq, message_id, sender_user_id,
      sender_device_id, client_message_id, kind, shared_ciphertext, accepted_at, stored_at, expires_at,
      membership_version, traceparent, force_trace)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
    // The write timestamp is the expiry: the bucket's row keeps the TTL of its longest-lived message.
    insertBucket: `INSERT INTO ${t.messageBuckets} (conversation_id, bucket) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?`,
    insertRecipient: `INSERT INTO ${t.recipients} (conversation_id, user_id, seq, message_id, sender_user_id,
      expires_at) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?`,
    insertMessageRecipient: `INSERT INTO ${t.messageRecipients} (conversation_id, seq, user_id) VALUES (?, ?, ?)
      USING TTL ?`,
  };
  const run = (query: string, params: unknown[]) => client.execute(query, params, IDEMPOTENT);

  async function findDuplicate(m: StoredMessage) {
    const [byId, byClientId] = await Promise.all([
      messages.locate(m.messageId),
      run(q.clientMessageId, [m.sender.userId, m.sender.deviceId, m.clientMessageId]),
    ]);
    if (byId !== undefined) return { by: "message_id" as const, messageId: m.messageId, ...byId };
    const row = byClientId.first();
    if (row === null) return undefined;
    return {
      by: "client_message_id" as const,
      messageId: String(row.get("message_id")),
      conversationId: String(row.get("conversation_id")),
      seq: toNumber(row.get("seq")),
    };
  }

  /** Reads each target's inbox statics and builds the events from the positions they promise. */
  async function plan(input: StoreMessageInput, seq: number, events: Events): Promise<Plan> {
    const found = await mapLimit(input.targets, concurrency, (target) => inboxes.readStatics(target.device));
    const statics = new Map<string, InboxStatics>();
    const targets: AssignedMessage["targets"][number][] = [];
    input.targets.forEach((target, i) => {
      const s = found[i] as InboxStatics;
      statics.set(deviceKey(target.device), s);
      if (s.removedAt !== null && input.message.acceptedAt.getTime() <= s.removedAt.getTime()) return;
      targets.push({
        device: target.device,
        ciphertext: target.ciphertext,
        position: (s.lastPosition ?? 0) + 1,
      });
    });
    const guess = events({ message: { ...input.message, seq }, targets, storedAt: input.storedAt });
    return { statics, guess: { targets, events: guess } };
  }

  /** The effects of a claimed step, each idempotent, then its release. */
  async function finish(
    input: StoreMessageInput,
    seq: number,
    events: Events,
    planned?: Plan,
  ): Promise<void> {
    const m: StoredMessage = { ...input.message, seq };
    const { conversationId, messageId } = m;
    const ttl = ttlSeconds(input.expiresAt, input.storedAt);
    const bucket = messages.bucketOf(seq);
    const recipients = [...new Set(input.recipientUserIds)];

    // 1. The message and its receipt rows, then its dedup keys (a message found by id has the rest).
    await Promise.all([
      run(q.insertMessage, [
        conversationId,
        bucket,
        seq,
        messageId,
        m.sender.userId,
        m.sender.deviceId,
        m.clientMessageId,
        m.kind,
        m.sharedCiphertext === undefined ? UNSET : Buffer.from(m.sharedCiphertext),
        m.acceptedAt,
        input.storedAt,
        input.expiresAt,
        cassandra.types.Integer.fromString(input.membershipVersion.toString()),
        m.traceparent,
        m.forceTrace,
        ttl,
      ]),
      run(q.insertBucket, [conversationId, bucket, ttl, writeTimestamp(input.expiresAt)]),
      devices.seen(m.sender, input.storedAt),
      mapLimit(recipients, concurrency, (userId) =>
        run(q.insertRecipient, [
          conversationId,
          userId,
          seq,
          messageId,
          m.sender.userId,
          input.expiresAt,
          ttl,
        ]),
      ),
      chunked(recipients, PARTITION_CHUNK, (chunk) =>
        applyToPartition(
          client,
          chunk.map((userId) => ({
            query: q.insertMessageRecipient,
            params: [conversationId, seq, userId, ttl],
          })),
        ),
      ),
    ]);
    await Promise.all([
      run(q.insertMessageId, [messageId, conversationId, seq, ttl]),
      run(q.insertClientMessageId, [
        m.sender.userId,
        m.sender.deviceId,
        m.clientMessageId,
        messageId,
        conversationId,
        seq,
        ttl,
      ]),
    ]);
    afterStep("message:written");

    // 2. An inbox item per target device.
    const placed = await mapLimit(input.targets, concurrency, async (target) => {
      const position = await inboxes.placeMessage(
        target.device,
        {
          conversationId,
          seq,
          acceptedAt: m.acceptedAt,
          ciphertext: target.ciphertext,
          expiresAt: input.expiresAt,
          ttl,
        },
        planned?.statics.get(deviceKey(target.device)),
      );
      if (position === undefined) return undefined;
      await devices.seen(target.device, input.storedAt);
      return { device: target.device, ciphertext: target.ciphertext, position };
    });
    const targets = placed.filter((p) => p !== undefined);
    afterStep("message:placed");

    // 3. The events, built from what was assigned.
    const asPlanned =
      planned !== undefined &&
      planned.guess.targets.length === targets.length &&
      planned.guess.targets.every((g, i) => {
        const actual = targets[i];
        return actual !== undefined && sameDevice(g.device, actual.device) && g.position === actual.position;
      });
    const outgoing = asPlanned
      ? planned.guess.events
      : events({ message: m, targets, storedAt: input.storedAt });
    for (const event of outgoing) {
      const statement = outbox.appendStatement(event);
      await run(statement.query, statement.params);
    }
    afterStep("message:published");

    // 4. Finished: the conversation takes its next message.
    await release(conversationId, messageId);
    afterStep("message:released");
    await run(q.unstage, [messageId]);
  }

  async function release(conversationId: string, messageId: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        // Not applied: someone else finished it already.
        await client.execute(q.release, [conversationId, messageId], CONDITIONAL);
        return;
      } catch (err) {
        if (!isUncertainWrite(err) || attempt >= 5) throw err;
        await backoff(attempt);
      }
    }
  }

  /** Finishes a step found pending, from its staged input (or `known`, the same message's input). */
  async function finishPending(
    conversationId: string,
    messageId: string,
    seq: number,
    events: Events,
    known: StoreMessageInput | undefined,
  ): Promise<void> {
    let input = known;
    if (input === undefined) {
      const row = (await run(q.staged, [messageId])).first();
      input = row === null ? undefined : decodeStep(String(row.get("step")));
    }
    if (input !== undefined) {
      await finish(input, seq, events);
      return;
    }
    // The staged input is deleted only after the step is released, and otherwise outlives the
    // message: a step still pending without it held a message that has expired since.
    if ((await messages.conversation(conversationId)).pending === messageId) {
      ctx.logger.warn(
        { conversationId, messageId, seq },
        "history: releasing a store step whose input expired; its seq stays unused",
      );
      await release(conversationId, messageId);
    }
  }

  /**
   * Waits while a store step is pending in the conversation (only `messageId`'s, when given),
   * finishing a step that stayed pending for `takeOverAfterMs`; the conversation after it.
   */
  async function settle(
    conversationId: string,
    seen: ConversationState,
    events: Events,
    known: StoreMessageInput | undefined,
    messageId?: string,
  ): Promise<ConversationState> {
    let current = seen;
    let watching: string | undefined;
    let since = 0;
    for (let attempt = 0; ; attempt++) {
      const pending = current.pending;
      if (pending === undefined || (messageId !== undefined && pending !== messageId)) return current;
      if (pending !== watching) {
        watching = pending;
        since = Date.now();
      }
      if (Date.now() - since >= ctx.takeOverAfterMs) {
        const input = known?.message.messageId === pending ? known : undefined;
        await finishPending(conversationId, pending, current.lastSeq ?? 0, events, input);
        since = Date.now();
      } else {
        await backoff(attempt);
      }
      current = await messages.conversation(conversationId);
    }
  }

  return async function storeMessage(input: StoreMessageInput, events: Events): Promise<StoreMessageResult> {
    const m = input.message;
    const conversationId = m.conversationId;
    const deadline = Date.now() + STEP_DEADLINE_MS;
    const token = randomUUID();
    let staged = false;
    let conversation = await messages.conversation(conversationId);
    while (Date.now() < deadline) {
      if (conversation.pending !== undefined) {
        if (conversation.claim === token) {
          // Our claim timed out but went through: the step is ours.
          const seq = conversation.lastSeq ?? 0;
          await finish(input, seq, events);
          return { outcome: "stored", seq };
        }
        conversation = await settle(conversationId, conversation, events, input);
        continue;
      }
      // No step pending: every stored message's dedup keys exist, and one claimed from now on
      // moves last_seq and fails the claim below.
      const duplicate = await findDuplicate(m);
      if (duplicate !== undefined) {
        // Its keys are written while its step is pending: finish that first.
        const owner = await messages.conversation(duplicate.conversationId);
        await settle(duplicate.conversationId, owner, events, input, duplicate.messageId);
        if (staged) await run(q.unstage, [m.messageId]);
        return { outcome: "duplicate", by: duplicate.by, messageId: duplicate.messageId, seq: duplicate.seq };
      }
      const seq = (conversation.lastSeq ?? 0) + 1;
      // Before anything is written: a throwing `events` leaves no trace.
      const planned = await plan(input, seq, events);
      if (!staged) {
        const stagedTtl = ttlSeconds(input.expiresAt, input.storedAt);
        await run(q.stage, [m.messageId, conversationId, encodeStep(input), stagedTtl]);
        staged = true;
        afterStep("message:staged");
      }
      let claim: cassandra.types.ResultSet;
      try {
        const params = [seq, m.messageId, token, conversationId, conversation.lastSeq];
        claim = await client.execute(q.claim, params, CONDITIONAL);
      } catch (err) {
        if (!isUncertainWrite(err)) throw err;
        conversation = await messages.conversation(conversationId);
        continue;
      }
      if (!claim.wasApplied()) {
        conversation = messages.conversationOf(claim.first());
        continue;
      }
      afterStep("message:claimed");
      await finish(input, seq, events, planned);
      return { outcome: "stored", seq };
    }
    throw new Error(
      `history: could not store message ${m.messageId}: conversation ${conversationId} stayed busy`,
    );
  };
}
