/**
 * Device inboxes on Cassandra: one partition per device (see InboxRow in schema.ts).
 *
 * Placing an item is one conditional batch on the device's partition: it moves the static
 * `last_position` from p to p + 1 (IF last_position = p AND removed_at = r), inserts the item at
 * p + 1 and records the placement. So an item is visible exactly when its position is handed out
 * (no reader can ever pass a position whose item is still to come), and concurrent placements
 * serialize on the partition, none of them on a conversation or a user.
 *
 * Placing is idempotent: before each attempt the placement record is read (after the static
 * columns, so a placement by someone else in between moves last_position and fails the attempt);
 * a message placed already keeps its first position, a receipt whose version (or a later one)
 * is in the slot is not placed again. A removal (`markRemoved`) changes removed_at, so a placement
 * decided before it fails and is decided again.
 */
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import type { DeviceRef, ReceiptRecord } from "../../domain/model.ts";
import { mergeReceipt } from "../../domain/receipts.ts";
import { bytesOf, decodeReceipt, encodeReceipt, optionalDate, optionalNumber, toNumber } from "./codec.ts";
import type { Statement } from "./cql.ts";
import {
  applyToPartition,
  backoff,
  CONDITIONAL,
  createKeyedSerializer,
  IDEMPOTENT,
  isUncertainWrite,
  rowsOf,
  UNSET,
} from "./cql.ts";
import type { HistoryTables } from "./schema.ts";
import { InboxRow } from "./schema.ts";

/** The static columns of a device's partition, as stored (null when never written). */
export interface InboxStatics {
  readonly lastPosition: number | null;
  readonly removedAt: Date | null;
}

export interface MessagePlacement {
  readonly conversationId: string;
  readonly seq: number;
  readonly acceptedAt: Date;
  /** The device's pairwise ciphertext; undefined for a shared payload. */
  readonly ciphertext: Uint8Array | undefined;
  readonly expiresAt: Date;
  readonly ttl: number;
}

export interface ReceiptPlacement {
  readonly receipt: ReceiptRecord;
  /** The slot's key (reader and kind). */
  readonly key: string;
  /** The version of the reader user's receipt state that recorded it: slots only move forward. */
  readonly version: number;
  readonly expiresAt: Date;
  readonly ttl: number;
}

/** A row of the inbox in position order, as stored. */
export interface StoredInboxItem {
  readonly position: number;
  readonly conversationId: string;
  /** undefined for a receipt item. */
  readonly seq: number | undefined;
  readonly acceptedAt: Date | undefined;
  readonly receipt: ReceiptRecord | undefined;
  readonly expiresAt: Date;
}

export type InboxClear = { readonly upToSeq: number } | { readonly seqs: readonly number[] };

/** Placements that lose this many races in a row give up (the caller's retry starts over). */
const MAX_ATTEMPTS = 100;

/** The first retry uses what the lost race returned at once; later ones spread out a busy inbox. */
function afterLostRace(attempt: number): Promise<void> {
  return attempt === 0 ? Promise.resolve() : backoff(attempt);
}
/** Deletes per batch when clearing or dropping many items. */
const DELETE_CHUNK = 200;

export type DeviceInboxes = ReturnType<typeof createDeviceInboxes>;

export function createDeviceInboxes(client: CassandraClient, tables: HistoryTables) {
  const inbox = tables.inbox;
  const partition = "user_id = ? AND device_id = ?";
  const q = {
    statics: `SELECT last_position, removed_at FROM ${inbox} WHERE ${partition} LIMIT 1`,
    bump: `UPDATE ${inbox} SET last_position = ? WHERE ${partition} IF last_position = ? AND removed_at = ?`,
    markRemoved: `UPDATE ${inbox} SET removed_at = ? WHERE ${partition} IF removed_at = ?`,
    insertMessageItem: `INSERT INTO ${inbox} (user_id, device_id, row_kind, scope, num, tag, conversation_id, seq, accepted_at, expires_at)
      VALUES (?, ?, ${InboxRow.item}, '', ?, '', ?, ?, ?, ?) USING TTL ?`,
    insertPlaced: `INSERT INTO ${inbox} (user_id, device_id, row_kind, scope, num, tag, position, ciphertext, expires_at)
      VALUES (?, ?, ${InboxRow.placed}, ?, ?, '', ?, ?, ?) USING TTL ?`,
    insertUnacknowledged: `INSERT INTO ${inbox} (user_id, device_id, row_kind, scope, num, tag, position, accepted_at, expires_at)
      VALUES (?, ?, ${InboxRow.unacknowledged}, ?, ?, '', ?, ?, ?) USING TTL ?`,
    insertReceiptItem: `INSERT INTO ${inbox} (user_id, device_id, row_kind, scope, num, tag, conversation_id, receipt, expires_at)
      VALUES (?, ?, ${InboxRow.item}, '', ?, '', ?, ?, ?) USING TTL ?`,
    upsertSlot: `INSERT INTO ${inbox} (user_id, device_id, row_kind, scope, num, tag, position, receipt, version, expires_at)
      VALUES (?, ?, ${InboxRow.receiptSlot}, ?, 0, ?, ?, ?, ?, ?) USING TTL ?`,
    placed: `SELECT position, ciphertext FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.placed} AND scope = ? AND num = ? AND tag = ''`,
    placedIn: `SELECT num, position, ciphertext FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.placed} AND scope = ? AND num IN ?`,
    slot: `SELECT position, receipt, version FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.receiptSlot} AND scope = ? AND num = 0 AND tag = ?`,
    items: `SELECT num, conversation_id, seq, accepted_at, receipt, expires_at FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.item} AND scope = '' AND num > ?`,
    unacknowledgedUpTo: `SELECT num, position FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.unacknowledged} AND scope = ? AND num <= ?`,
    unacknowledgedIn: `SELECT num, position FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.unacknowledged} AND scope = ? AND num IN ?`,
    allUnacknowledged: `SELECT position, expires_at FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.unacknowledged}`,
    deleteItem: `DELETE FROM ${inbox} WHERE ${partition} AND row_kind = ${InboxRow.item} AND scope = '' AND num = ? AND tag = ''`,
    deleteUnacknowledged: `DELETE FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.unacknowledged} AND scope = ? AND num = ? AND tag = ''`,
    deleteUnacknowledgedUpTo: `DELETE FROM ${inbox}
      WHERE ${partition} AND row_kind = ${InboxRow.unacknowledged} AND scope = ? AND num <= ?`,
    deleteSlots: `DELETE FROM ${inbox} WHERE ${partition} AND row_kind = ${InboxRow.receiptSlot}`,
  };
  const key = (device: DeviceRef) => [device.userId, device.deviceId];

  const staticsOf = (row: { get(name: string): unknown } | null | undefined): InboxStatics => ({
    lastPosition:
      row === null || row === undefined ? null : (optionalNumber(row.get("last_position")) ?? null),
    removedAt: row === null || row === undefined ? null : (optionalDate(row.get("removed_at")) ?? null),
  });

  async function readStatics(device: DeviceRef): Promise<InboxStatics> {
    return staticsOf((await client.execute(q.statics, key(device), IDEMPOTENT)).first());
  }

  async function placedPosition(device: DeviceRef, conversationId: string, seq: number) {
    const row = (await client.execute(q.placed, [...key(device), conversationId, seq], IDEMPOTENT)).first();
    return row === null ? undefined : toNumber(row.get("position"));
  }

  /**
   * One conditional batch that bumps the position from `statics` and writes `rows` at it; the
   * statics it found instead when another change came first, or undefined when applied.
   * An unknown outcome (timeout) reads the statics again: the caller's checks decide the rest.
   */
  async function bumpWith(
    device: DeviceRef,
    statics: InboxStatics,
    rows: (position: number) => Statement[],
  ): Promise<{ readonly position: number } | { readonly current: InboxStatics }> {
    const position = (statics.lastPosition ?? 0) + 1;
    try {
      const result = await client.batch(
        [
          { query: q.bump, params: [position, ...key(device), statics.lastPosition, statics.removedAt] },
          ...rows(position),
        ],
        CONDITIONAL,
      );
      if (result.wasApplied()) return { position };
      return { current: staticsOf(result.first()) };
    } catch (err) {
      if (!isUncertainWrite(err)) throw err;
      return { current: await readStatics(device) };
    }
  }

  async function placeMessageNow(
    device: DeviceRef,
    p: MessagePlacement,
    known?: InboxStatics,
  ): Promise<number | undefined> {
    let statics = known ?? (await readStatics(device));
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const placed = await placedPosition(device, p.conversationId, p.seq);
      if (placed !== undefined) return placed;
      if (statics.removedAt !== null && p.acceptedAt.getTime() <= statics.removedAt.getTime()) {
        return undefined;
      }
      const outcome = await bumpWith(device, statics, (position) => [
        {
          query: q.insertMessageItem,
          params: [...key(device), position, p.conversationId, p.seq, p.acceptedAt, p.expiresAt, p.ttl],
        },
        {
          query: q.insertPlaced,
          params: [
            ...key(device),
            p.conversationId,
            p.seq,
            position,
            p.ciphertext === undefined ? UNSET : Buffer.from(p.ciphertext),
            p.expiresAt,
            p.ttl,
          ],
        },
        {
          query: q.insertUnacknowledged,
          params: [...key(device), p.conversationId, p.seq, position, p.acceptedAt, p.expiresAt, p.ttl],
        },
      ]);
      if ("position" in outcome) return outcome.position;
      statics = outcome.current;
      await afterLostRace(attempt);
    }
    throw new Error(`gave up placing a message in ${device.userId}/${device.deviceId}'s inbox: contention`);
  }

  /**
   * Puts receipts in the device's inbox at new positions (one conditional batch for all of them),
   * each replacing the device's earlier receipt of the same reader and kind in the conversation
   * (merged with it). Idempotent: a slot already at a placement's version (or later) is left.
   */
  async function placeReceiptsNow(device: DeviceRef, placements: readonly ReceiptPlacement[]): Promise<void> {
    // Several placements for one slot (a reader's receipts racing here) become one, in version order.
    const bySlot = new Map<string, ReceiptPlacement[]>();
    for (const p of placements) {
      const slotKey = `${p.receipt.conversationId}\u0000${p.key}`;
      bySlot.set(slotKey, [...(bySlot.get(slotKey) ?? []), p]);
    }
    const slots = [...bySlot.values()].map((list) => [...list].sort((a, b) => a.version - b.version));
    let statics = await readStatics(device);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const writes = (
        await Promise.all(
          slots.map(async (list) => {
            const newest = list.at(-1) as ReceiptPlacement;
            const conversationId = newest.receipt.conversationId;
            const slot = (
              await client.execute(q.slot, [...key(device), conversationId, newest.key], IDEMPOTENT)
            ).first();
            const stored = slot === null ? -1 : toNumber(slot.get("version"));
            if (stored >= newest.version) return undefined;
            let merged = slot === null ? undefined : decodeReceipt(String(slot.get("receipt")));
            for (const p of list) if (p.version > stored) merged = mergeReceipt(merged, p.receipt);
            return {
              newest,
              conversationId,
              oldPosition: slot === null ? undefined : toNumber(slot.get("position")),
              receipt: encodeReceipt(merged as ReceiptRecord),
            };
          }),
        )
      ).filter((w) => w !== undefined);
      if (writes.length === 0) return;
      const first = (statics.lastPosition ?? 0) + 1;
      const rows: Statement[] = [
        {
          query: q.bump,
          params: [first + writes.length - 1, ...key(device), statics.lastPosition, statics.removedAt],
        },
      ];
      writes.forEach((w, i) => {
        const position = first + i;
        const { newest } = w;
        if (w.oldPosition !== undefined)
          rows.push({ query: q.deleteItem, params: [...key(device), w.oldPosition] });
        rows.push(
          {
            query: q.insertReceiptItem,
            params: [...key(device), position, w.conversationId, w.receipt, newest.expiresAt, newest.ttl],
          },
          {
            query: q.upsertSlot,
            params: [
              ...key(device),
              w.conversationId,
              newest.key,
              position,
              w.receipt,
              newest.version,
              newest.expiresAt,
              newest.ttl,
            ],
          },
        );
      });
      try {
        const result = await client.batch(rows, CONDITIONAL);
        if (result.wasApplied()) return;
        statics = staticsOf(result.first());
      } catch (err) {
        if (!isUncertainWrite(err)) throw err;
        statics = await readStatics(device);
      }
      await afterLostRace(attempt);
    }
    throw new Error(`gave up placing receipts in ${device.userId}/${device.deviceId}'s inbox: contention`);
  }

  // Placements in one device's inbox take turns in this process (see createKeyedSerializer), and
  // receipts waiting for their turn go in together: a group's members acking a popular sender's
  // message at once cost that sender's devices a few conditional batches, not one each.
  const inTurn = createKeyedSerializer();
  const deviceTurn = (device: DeviceRef) => `${device.userId}/${device.deviceId}`;
  const waitingReceipts = new Map<
    string,
    { placement: ReceiptPlacement; resolve: () => void; reject: (err: unknown) => void }[]
  >();
  const placeReceiptInTurn = (device: DeviceRef, placement: ReceiptPlacement): Promise<void> =>
    new Promise((resolve, reject) => {
      const turn = deviceTurn(device);
      const waiting = waitingReceipts.get(turn);
      if (waiting !== undefined) {
        waiting.push({ placement, resolve, reject });
        return;
      }
      waitingReceipts.set(turn, [{ placement, resolve, reject }]);
      void inTurn(turn, async () => {
        const batch = waitingReceipts.get(turn) ?? [];
        waitingReceipts.delete(turn);
        try {
          await placeReceiptsNow(
            device,
            batch.map((w) => w.placement),
          );
          for (const w of batch) w.resolve();
        } catch (err) {
          for (const w of batch) w.reject(err);
        }
      });
    });

  return {
    readStatics,

    /**
     * Places a message item for the device once; its position (the first one when it was placed
     * already), or undefined when the device was removed at or after the message's accepted_at.
     * `known` are statics read before (they save a read when still current).
     */
    placeMessage(device: DeviceRef, p: MessagePlacement, known?: InboxStatics): Promise<number | undefined> {
      return inTurn(deviceTurn(device), () => placeMessageNow(device, p, known));
    },

    /**
     * Puts a receipt in the device's inbox at a new position, replacing the device's earlier
     * receipt of the same reader and kind in the conversation (merged with it). Idempotent.
     */
    placeReceipt(device: DeviceRef, p: ReceiptPlacement): Promise<void> {
      return placeReceiptInTurn(device, p);
    },

    /** Whether the message was placed for the device (it was one of its targets). */
    async wasPlaced(device: DeviceRef, conversationId: string, seq: number): Promise<boolean> {
      return (await placedPosition(device, conversationId, seq)) !== undefined;
    },

    /** The device's pairwise ciphertexts of these messages of a conversation (by seq). */
    async ciphertexts(
      device: DeviceRef,
      conversationId: string,
      seqs: readonly number[],
    ): Promise<Map<number, Uint8Array>> {
      const found = new Map<number, Uint8Array>();
      if (seqs.length === 0) return found;
      const rows = await client.execute(q.placedIn, [...key(device), conversationId, [...seqs]], IDEMPOTENT);
      for (const row of rows.rows) {
        const ciphertext = bytesOf(row.get("ciphertext"));
        if (ciphertext !== undefined) found.set(toNumber(row.get("num")), ciphertext);
      }
      return found;
    },

    /** The device's items after a position, in position order, as stored (expired ones included). */
    async *items(
      device: DeviceRef,
      afterPosition: number,
      pageSize: number,
    ): AsyncGenerator<StoredInboxItem> {
      for await (const row of rowsOf(client, q.items, [...key(device), afterPosition], pageSize)) {
        const receipt = row.get("receipt") as string | null;
        yield {
          position: toNumber(row.get("num")),
          conversationId: String(row.get("conversation_id")),
          seq: receipt === null ? toNumber(row.get("seq")) : undefined,
          acceptedAt: optionalDate(row.get("accepted_at")),
          receipt: receipt === null ? undefined : decodeReceipt(receipt),
          expiresAt: row.get("expires_at") as Date,
        };
      }
    },

    /** The position of the device's oldest unacknowledged, unexpired message item. */
    async oldestUnacknowledged(device: DeviceRef, now: Date): Promise<number | undefined> {
      let oldest: number | undefined;
      for await (const row of rowsOf(client, q.allUnacknowledged, key(device), 1000)) {
        if ((row.get("expires_at") as Date).getTime() <= now.getTime()) continue;
        const position = toNumber(row.get("position"));
        if (oldest === undefined || position < oldest) oldest = position;
      }
      return oldest;
    },

    /** Removes acknowledged messages of a conversation from the device's inbox. Idempotent. */
    async clear(device: DeviceRef, conversationId: string, clear: InboxClear): Promise<void> {
      if ("upToSeq" in clear) {
        if (clear.upToSeq <= 0) return;
        const rows = await client.execute(
          q.unacknowledgedUpTo,
          [...key(device), conversationId, clear.upToSeq],
          IDEMPOTENT,
        );
        const found = rows.rows.map((r) => ({
          seq: toNumber(r.get("num")),
          position: toNumber(r.get("position")),
        }));
        for (let i = 0; i < found.length; i += DELETE_CHUNK) {
          const chunk = found.slice(i, i + DELETE_CHUNK);
          const highest = chunk.at(-1)?.seq ?? 0;
          await applyToPartition(client, [
            ...chunk.map((f) => ({ query: q.deleteItem, params: [...key(device), f.position] })),
            // One range tombstone instead of one per message.
            { query: q.deleteUnacknowledgedUpTo, params: [...key(device), conversationId, highest] },
          ]);
        }
        return;
      }
      if (clear.seqs.length === 0) return;
      const rows = await client.execute(
        q.unacknowledgedIn,
        [...key(device), conversationId, [...clear.seqs]],
        IDEMPOTENT,
      );
      const statements = rows.rows.flatMap((r) => [
        { query: q.deleteItem, params: [...key(device), toNumber(r.get("position"))] },
        { query: q.deleteUnacknowledged, params: [...key(device), conversationId, toNumber(r.get("num"))] },
      ]);
      for (let i = 0; i < statements.length; i += DELETE_CHUNK) {
        await applyToPartition(client, statements.slice(i, i + DELETE_CHUNK));
      }
    },

    /**
     * Remembers that the device was removed at `removedAt` (only ever moving the mark forward),
     * in the partition, where every later placement's condition sees it.
     */
    async markRemoved(device: DeviceRef, removedAt: Date): Promise<void> {
      let current = (await readStatics(device)).removedAt;
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        if (current !== null && current.getTime() >= removedAt.getTime()) return;
        try {
          const result = await client.execute(
            q.markRemoved,
            [removedAt, ...key(device), current],
            CONDITIONAL,
          );
          if (result.wasApplied()) return;
          current = staticsOf(result.first()).removedAt;
        } catch (err) {
          if (!isUncertainWrite(err)) throw err;
          current = (await readStatics(device)).removedAt;
        }
      }
      throw new Error(`gave up marking ${device.userId}/${device.deviceId} removed: contention`);
    },

    /**
     * Deletes every receipt item and every message item of a message accepted up to `removedAt`;
     * how many items it deleted.
     */
    async drop(device: DeviceRef, removedAt: Date): Promise<number> {
      const statements: Statement[] = [];
      let dropped = 0;
      let receipts = false;
      for await (const row of rowsOf(client, q.items, [...key(device), 0], 1000)) {
        const position = toNumber(row.get("num"));
        const isReceipt = row.get("receipt") !== null;
        const acceptedAt = optionalDate(row.get("accepted_at"));
        if (!isReceipt && acceptedAt !== undefined && acceptedAt.getTime() > removedAt.getTime()) continue;
        dropped++;
        receipts ||= isReceipt;
        statements.push({ query: q.deleteItem, params: [...key(device), position] });
        if (!isReceipt) {
          statements.push({
            query: q.deleteUnacknowledged,
            params: [...key(device), String(row.get("conversation_id")), toNumber(row.get("seq"))],
          });
        }
      }
      if (receipts) statements.push({ query: q.deleteSlots, params: key(device) });
      for (let i = 0; i < statements.length; i += DELETE_CHUNK) {
        await applyToPartition(client, statements.slice(i, i + DELETE_CHUNK));
      }
      return dropped;
    },
  };
}
