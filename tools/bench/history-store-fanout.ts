// `node tools/bench/history-store-fanout.ts [--members 1000] [--devices-per-member 5] [--sends 5]`:
// the embedded history store's share of one S2 send, without the rest of the mesh. One group
// message is stored for every device but the sender's, then every one of those devices
// acknowledges it DELIVERED (as the S2 clients do), all queued at once as a RecordAcknowledgements
// burst would queue them. Baseline in the same run: the rows one send needs at least (an inbox
// row per target device written, then deleted by its ack, and a receipt row per sender device
// and reader user, replaced at each send), written by bare prepared statements in transactions
// of the same size, on the same disk with the same `synchronous = FULL`: how far above raw
// SQLite the store's bookkeeping is.
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { openSqlite } from "../../lib/sqlite.ts";
import { createSqliteHistoryStore } from "../../services/history/adapters/sqlite/sqlite-history-store.ts";
import type { DeviceRef } from "../../services/history/domain/model.ts";

const DAY_MS = 86_400_000;
/** As many writes as the store's group commit puts in one transaction. */
const BASELINE_TRANSACTION = 1024;

const { values } = parseArgs({
  options: {
    members: { type: "string", default: "1000" },
    "devices-per-member": { type: "string", default: "5" },
    sends: { type: "string", default: "5" },
  },
});
const members = Number(values.members);
const devicesPerMember = Number(values["devices-per-member"]);
const sends = Number(values.sends);

const dir = mkdtempSync(join(tmpdir(), "parley-store-bench-"));
try {
  const users = Array.from({ length: members }, () => randomUUID());
  const devices: DeviceRef[] = users.flatMap((userId) =>
    Array.from({ length: devicesPerMember }, (_, i) => ({ userId, deviceId: `device-${i}` })),
  );
  const [sender, ...receivers] = devices as [DeviceRef, ...DeviceRef[]];
  const store = await measureStore(join(dir, "history.db"), sender, receivers, users.slice(1));
  const baseline = measureBaseline(join(dir, "baseline.db"), receivers, devicesPerMember, members - 1);
  console.log(
    `history store, ${members} members x ${devicesPerMember} devices, ${sends} sends (median of each):`,
  );
  const row = (name: string, phase: "store" | "acks") => {
    const ms = store[phase];
    const m = median(ms);
    const b = median(baseline[phase]);
    return `  ${name.padEnd(16)} ${m.toFixed(0).padStart(6)} ms (runs ${ms.map((x) => x.toFixed(0)).join(", ")}); bare SQLite ${b.toFixed(0)} ms: ${(m / b).toFixed(1)}x`;
  };
  console.log(row("store message", "store"));
  console.log(row("record acks", "acks"));
} finally {
  rmSync(dir, { recursive: true, force: true });
}

async function measureStore(
  path: string,
  sender: DeviceRef,
  receivers: readonly DeviceRef[],
  recipientUserIds: readonly string[],
): Promise<{ store: number[]; acks: number[] }> {
  const store = createSqliteHistoryStore({ path });
  const conversationId = randomUUID();
  const targets = receivers.map((device) => ({ device, ciphertext: undefined }));
  const times = { store: [] as number[], acks: [] as number[] };
  try {
    for (let send = 0; send < sends; send++) {
      const now = new Date();
      let started = performance.now();
      const result = await store.storeMessage(
        {
          message: {
            messageId: randomUUID(),
            conversationId,
            seq: 0,
            sender,
            clientMessageId: randomUUID(),
            kind: 1,
            sharedCiphertext: new Uint8Array(100),
            acceptedAt: now,
            traceparent: "",
            forceTrace: false,
          },
          targets,
          recipientUserIds,
          membershipVersion: 1n,
          storedAt: now,
          expiresAt: new Date(now.getTime() + 30 * DAY_MS),
        },
        () => [{ topic: "chat.deliveries", key: conversationId, payload: new Uint8Array(64) }],
      );
      times.store.push(performance.now() - started);
      if (result.outcome !== "stored") throw new Error(`message not stored: ${result.outcome}`);
      started = performance.now();
      const at = new Date();
      await Promise.all(
        receivers.map((reader) =>
          store.recordReceipt(
            {
              conversationId,
              reader,
              kind: "delivered",
              target: { upToSeq: result.seq },
              at,
              now: at,
              receiptExpiresAt: new Date(at.getTime() + 30 * DAY_MS),
              devicesSeenSince: new Date(at.getTime() - 30 * DAY_MS),
            },
            () => ({ topic: "chat.receipts", key: conversationId, payload: new Uint8Array(64) }),
          ),
        ),
      );
      times.acks.push(performance.now() - started);
    }
  } finally {
    store.close();
  }
  return times;
}

function measureBaseline(
  path: string,
  receivers: readonly DeviceRef[],
  senderDevices: number,
  readerUsers: number,
): { store: number[]; acks: number[] } {
  const db = openSqlite(path);
  db.exec(`CREATE TABLE inbox (user_id TEXT, device_id TEXT, position INTEGER, item TEXT,
    PRIMARY KEY (user_id, device_id, position)) WITHOUT ROWID`);
  db.exec(`CREATE TABLE receipts (device_id TEXT, reader INTEGER, position INTEGER,
    PRIMARY KEY (device_id, reader)) WITHOUT ROWID`);
  const insert = db.prepare("INSERT INTO inbox VALUES (?, ?, ?, ?)");
  // One receipt per sender device and reader, replaced by the next send's (as the store merges them).
  const placeReceipt = db.prepare("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?)");
  const remove = db.prepare("DELETE FROM inbox WHERE user_id = ? AND device_id = ? AND position = ?");
  const inTransactions = (count: number, write: (i: number) => void) => {
    for (let from = 0; from < count; from += BASELINE_TRANSACTION) {
      db.exec("BEGIN IMMEDIATE");
      for (let i = from; i < Math.min(count, from + BASELINE_TRANSACTION); i++) write(i);
      db.exec("COMMIT");
    }
  };
  const times = { store: [] as number[], acks: [] as number[] };
  try {
    for (let send = 1; send <= sends; send++) {
      let started = performance.now();
      inTransactions(receivers.length, (i) => {
        const device = receivers[i] as DeviceRef;
        insert.run(device.userId, device.deviceId, send, "message");
      });
      times.store.push(performance.now() - started);
      started = performance.now();
      inTransactions(receivers.length, (i) => {
        const device = receivers[i] as DeviceRef;
        remove.run(device.userId, device.deviceId, send);
      });
      inTransactions(readerUsers * senderDevices, (i) => {
        placeReceipt.run(`device-${i % senderDevices}`, Math.floor(i / senderDevices), send);
      });
      times.acks.push(performance.now() - started);
    }
  } finally {
    db.close();
  }
  return times;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}
