/**
 * Every device history has seen, per user: when it was last seen and last removed, for the
 * receipts' fan-out. Both times are written with the time itself as the write timestamp, so the
 * latest wins whatever order the writes land in, without a read or a lightweight transaction.
 */
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import type { DeviceRef } from "../../domain/model.ts";
import { optionalDate, writeTimestamp } from "./codec.ts";
import { IDEMPOTENT } from "./cql.ts";
import type { HistoryTables } from "./schema.ts";

export type DeviceDirectory = ReturnType<typeof createDeviceDirectory>;

export function createDeviceDirectory(client: CassandraClient, tables: HistoryTables) {
  const q = {
    seen: `INSERT INTO ${tables.devices} (user_id, device_id, last_seen_at) VALUES (?, ?, ?) USING TIMESTAMP ?`,
    removed: `INSERT INTO ${tables.devices} (user_id, device_id, removed_at) VALUES (?, ?, ?) USING TIMESTAMP ?`,
    ofUser: `SELECT device_id, last_seen_at, removed_at FROM ${tables.devices} WHERE user_id = ?`,
  };
  return {
    seen(device: DeviceRef, at: Date) {
      return client.execute(q.seen, [device.userId, device.deviceId, at, writeTimestamp(at)], IDEMPOTENT);
    },

    removed(device: DeviceRef, at: Date) {
      return client.execute(q.removed, [device.userId, device.deviceId, at, writeTimestamp(at)], IDEMPOTENT);
    },

    /** The user's devices seen since `since`, a removed one only once seen after its removal. */
    async known(userId: string, since: Date): Promise<DeviceRef[]> {
      const rows = await client.execute(q.ofUser, [userId], IDEMPOTENT);
      return rows.rows.flatMap((row) => {
        const seen = optionalDate(row.get("last_seen_at"));
        const removed = optionalDate(row.get("removed_at"));
        if (seen === undefined || seen.getTime() < since.getTime()) return [];
        if (removed !== undefined && seen.getTime() <= removed.getTime()) return [];
        return [{ userId, deviceId: String(row.get("device_id")) }];
      });
    },
  };
}
