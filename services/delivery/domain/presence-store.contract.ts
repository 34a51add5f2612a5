import { describe, expect, it } from "vitest";
import type { DevicePresence, PresenceStore } from "./ports.ts";

const entry = (userId: string, deviceId: string, hostId: string, expiresAt: number): DevicePresence => ({
  device: { userId, deviceId },
  hostId,
  activity: "active",
  updatedAt: expiresAt - 30_000,
  expiresAt,
});

/** What every PresenceStore (memory now, Redis in the cluster) must do. */
export function describePresenceStoreContract(
  name: string,
  make: (options: { readonly now: () => number }) => PresenceStore & { close(): void },
): void {
  describe(`PresenceStore contract: ${name}`, () => {
    it("keeps one entry per (device, host): a late disconnect from the old host removes only its own", async () => {
      const store = make({ now: () => 0 });
      await store.upsert([entry("alice", "phone", "edge-a", 100_000)]);
      await store.upsert([
        entry("alice", "phone", "edge-b", 100_000),
        entry("alice", "laptop", "edge-a", 100_000),
      ]);
      await store.remove({ userId: "alice", deviceId: "phone" }, "edge-a");
      const live = await store.devicesOf("alice", 1_000);
      expect(live.map((d) => `${d.device.deviceId}@${d.hostId}`).sort()).toEqual([
        "laptop@edge-a",
        "phone@edge-b",
      ]);
      expect(await store.devicesOf("bob", 1_000)).toEqual([]);
      store.close();
    });

    it("hides expired entries at once and hands each to the sweep exactly once", async () => {
      const store = make({ now: () => 0 });
      await store.upsert([
        entry("alice", "phone", "edge-a", 10_000),
        entry("alice", "laptop", "edge-a", 50_000),
      ]);
      expect((await store.devicesOf("alice", 10_000)).map((d) => d.device.deviceId)).toEqual(["laptop"]);
      expect((await store.takeExpired(10_000)).map((d) => d.device.deviceId)).toEqual(["phone"]);
      expect(await store.takeExpired(10_000)).toEqual([]);
      // A refreshed entry is no longer expired at its old time.
      await store.upsert([entry("alice", "laptop", "edge-a", 90_000)]);
      expect(await store.takeExpired(60_000)).toEqual([]);
      store.close();
    });

    it("keeps each user's last published record", async () => {
      const store = make({ now: () => 0 });
      expect(await store.userRecord("alice")).toBeUndefined();
      await store.setUserRecord("alice", { state: "online", lastSeen: 5, changedAt: 5 });
      await store.setUserRecord("alice", { state: "offline", lastSeen: 9, changedAt: 9 });
      expect(await store.userRecord("alice")).toEqual({ state: "offline", lastSeen: 9, changedAt: 9 });
      expect(await store.userRecord("bob")).toBeUndefined();
      store.close();
    });
  });
}
