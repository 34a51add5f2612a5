// The behaviour every KeyStore adapter must have. Each adapter's test calls
// `describeKeyStoreContract` with a factory of empty stores (the embedded SQLite store today, the
// Cassandra store later).
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { KeyChanged, PrekeysLow } from "../../../gen/parley/events/v1/key_events_pb.ts";
import {
  KeyChangedSchema,
  KeyChangeKind,
  PrekeysLowSchema,
} from "../../../gen/parley/events/v1/key_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import { deviceKeys, generateKeyPair, oneTimePrekeys, signedPrekey } from "../test-support.ts";
import type { ClaimInput, KeyStore, RegisterDeviceInput } from "./key-store.ts";
import type { DeviceAddress, PrekeyBundle } from "./model.ts";

const T0 = new Date("2030-01-01T00:00:00Z");
const at = (ms: number) => new Date(T0.getTime() + ms);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

type Events = { keyChanged: KeyChanged[]; prekeysLow: PrekeysLow[] };

/** Registration input with real, signed keys. */
function registration(
  address: DeviceAddress,
  options: { oneTimePrekeys?: number; now?: Date; keys?: ReturnType<typeof deviceKeys> } = {},
): RegisterDeviceInput & { keys: ReturnType<typeof deviceKeys> } {
  const keys = options.keys ?? deviceKeys({ oneTimePrekeys: options.oneTimePrekeys ?? 10 });
  return {
    keys,
    address,
    displayName: `${address.deviceId} of ${address.userId}`,
    identityKey: keys.identityKey,
    signedPrekey: keys.signedPrekey,
    lastResortPrekey: keys.lastResortPrekey,
    oneTimePrekeys: keys.oneTimePrekeys,
    maxDevices: 5,
    maxOneTimePrekeys: 1000,
    now: options.now ?? T0,
    traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  };
}

function claim(userId: string, overrides: Partial<ClaimInput> = {}): ClaimInput {
  return {
    userId,
    deviceIds: undefined,
    excludeDeviceId: undefined,
    now: T0,
    lowWatermark: 10,
    prekeysLowIntervalMs: HOUR,
    traceparent: "",
    ...overrides,
  };
}

function oneTimeIdOf(bundle: PrekeyBundle | undefined): number | undefined {
  return bundle?.prekey.kind === "one_time" ? bundle.prekey.prekey.keyId : undefined;
}

export function describeKeyStoreContract(name: string, makeStore: () => KeyStore | Promise<KeyStore>): void {
  describe(`KeyStore contract: ${name}`, () => {
    let store: KeyStore;
    beforeEach(async () => {
      store = await makeStore();
    });
    afterEach(() => {
      store.close();
    });

    /** Events written since the last call (they are then marked published). */
    async function drainEvents(): Promise<Events> {
      const pending = await store.outbox.pending(10_000);
      await store.outbox.markPublished(pending.map((r) => r.id));
      const events: Events = { keyChanged: [], prekeysLow: [] };
      for (const record of pending) {
        if (record.topic === Topics.keys)
          events.keyChanged.push(fromBinary(KeyChangedSchema, record.payload));
        else if (record.topic === Topics.prekeys)
          events.prekeysLow.push(fromBinary(PrekeysLowSchema, record.payload));
        else throw new Error(`unexpected topic ${record.topic}`);
      }
      return events;
    }

    const alice = { userId: "alice", deviceId: "phone" };

    describe("devices", () => {
      it("registers a device with its keys and writes KeyChanged DEVICE_ADDED in the outbox", async () => {
        const input = registration(alice);
        const result = await store.registerDevice(input);
        expect(result.kind).toBe("registered");
        if (result.kind !== "registered") return;
        expect(result.created).toBe(true);
        expect(result.device.keyVersion).toBe(1);
        expect(result.device.oneTimePrekeyCount).toBe(10);

        const device = await store.getDevice(alice);
        expect(device?.identityKey).toEqual(input.identityKey);
        expect(device?.signedPrekey).toEqual({ ...input.signedPrekey, createdAt: T0 });
        expect(device?.lastResortPrekey).toEqual({ ...input.lastResortPrekey, createdAt: T0 });
        expect(device?.displayName).toBe(input.displayName);
        expect(device?.createdAt).toEqual(T0);
        expect(await store.deviceStatus(alice)).toEqual({ state: "active", registeredAt: T0, keyVersion: 1 });

        const { keyChanged, prekeysLow } = await drainEvents();
        expect(prekeysLow).toEqual([]);
        expect(keyChanged).toHaveLength(1);
        const [event] = keyChanged;
        expect(event?.kind).toBe(KeyChangeKind.DEVICE_ADDED);
        expect(event?.device).toMatchObject(alice);
        expect(event?.identityKey).toEqual(input.identityKey);
        expect(event?.keyVersion).toBe(1n);
        expect(event?.previousValidUntil).toBeUndefined();
        expect(timestampDate(event?.effectiveAt ?? ({ seconds: 0n, nanos: 0 } as never))).toEqual(T0);
        expect(event?.traceparent).toBe(input.traceparent);
      });

      it("answers a repeated registration with the stored device, adding only new one-time prekeys", async () => {
        const first = registration(alice, { oneTimePrekeys: 5 });
        await store.registerDevice(first);
        await drainEvents();
        const again = await store.registerDevice({
          ...first,
          displayName: "renamed",
          oneTimePrekeys: [...first.oneTimePrekeys, ...oneTimePrekeys(6, 3)],
          now: at(1000),
        });
        expect(again.kind).toBe("registered");
        if (again.kind !== "registered") return;
        expect(again.created).toBe(false);
        expect(again.device.displayName).toBe(first.displayName);
        expect(again.device.createdAt).toEqual(T0);
        expect(again.device.oneTimePrekeyCount).toBe(8);
        expect((await drainEvents()).keyChanged).toEqual([]);
      });

      it("refuses to register an active device id with another identity key", async () => {
        await store.registerDevice(registration(alice));
        expect(await store.registerDevice(registration(alice))).toEqual({ kind: "identity_conflict" });
      });

      it("allows at most maxDevices active devices per user", async () => {
        for (let i = 1; i <= 5; i++) {
          expect(
            (await store.registerDevice(registration({ userId: "alice", deviceId: `d${i}` }))).kind,
          ).toBe("registered");
        }
        expect(await store.registerDevice(registration({ userId: "alice", deviceId: "d6" }))).toEqual({
          kind: "device_limit",
          activeDevices: 5,
        });
        // Another user is not affected, and a removal frees a place.
        expect((await store.registerDevice(registration({ userId: "bob", deviceId: "d6" }))).kind).toBe(
          "registered",
        );
        await store.removeDevice({ address: { userId: "alice", deviceId: "d1" }, now: T0, traceparent: "" });
        expect((await store.registerDevice(registration({ userId: "alice", deviceId: "d6" }))).kind).toBe(
          "registered",
        );
      });

      it("removes a device: revoked, keys deleted, KeyChanged DEVICE_REMOVED; the id may come back as new", async () => {
        await store.registerDevice(registration(alice));
        await drainEvents();
        const removedAt = at(HOUR);
        expect(await store.removeDevice({ address: alice, now: removedAt, traceparent: "" })).toEqual({
          removedAt,
        });
        expect(await store.getDevice(alice)).toBeUndefined();
        expect(await store.deviceStatus(alice)).toEqual({ state: "removed", removedAt, keyVersion: 2 });
        expect(await store.deviceStatus({ userId: "alice", deviceId: "never" })).toEqual({
          state: "unknown",
        });
        expect((await store.activeDevices(["alice"])).get("alice")).toBeUndefined();
        expect(await store.claimPrekeyBundles(claim("alice"))).toEqual({ kind: "claimed", bundles: [] });
        const { keyChanged } = await drainEvents();
        expect(keyChanged.map((e) => [e.kind, e.keyVersion, e.identityKey.length])).toEqual([
          [KeyChangeKind.DEVICE_REMOVED, 2n, 0],
        ]);
        // Removing again finds nothing.
        expect(await store.removeDevice({ address: alice, now: removedAt, traceparent: "" })).toBeUndefined();

        const back = registration(alice, { now: at(2 * HOUR), oneTimePrekeys: 3 });
        const result = await store.registerDevice(back);
        expect(result.kind === "registered" && result.created).toBe(true);
        const device = await store.getDevice(alice);
        expect(device?.createdAt).toEqual(at(2 * HOUR));
        expect(device?.keyVersion).toBe(3);
        // The old device's one-time prekeys are gone: only the new batch is there.
        expect(device?.oneTimePrekeyCount).toBe(3);
        expect(await store.deviceStatus(alice)).toEqual({
          state: "active",
          registeredAt: at(2 * HOUR),
          keyVersion: 3,
        });
        expect((await drainEvents()).keyChanged.map((e) => [e.kind, e.keyVersion])).toEqual([
          [KeyChangeKind.DEVICE_ADDED, 3n],
        ]);
      });

      it("lists active devices oldest first, page by page", async () => {
        for (const [i, id] of ["c", "a", "b"].entries()) {
          await store.registerDevice(registration({ userId: "alice", deviceId: id }, { now: at(i * 1000) }));
        }
        // Same creation time as "b": ordered by id after it.
        await store.registerDevice(registration({ userId: "alice", deviceId: "d" }, { now: at(2000) }));
        await store.registerDevice(registration({ userId: "bob", deviceId: "x" }));
        const first = await store.listDevices("alice", { limit: 2 });
        expect(first.map((d) => d.deviceId)).toEqual(["c", "a"]);
        const last = first[1];
        if (last === undefined) throw new Error("no device");
        const second = await store.listDevices("alice", { after: last, limit: 10 });
        expect(second.map((d) => d.deviceId)).toEqual(["b", "d"]);
        const devices = await store.activeDevices(["alice", "bob", "carol"]);
        expect(devices.get("alice")?.map((d) => d.deviceId)).toEqual(["c", "a", "b", "d"]);
        expect(devices.get("bob")?.map((d) => d.deviceId)).toEqual(["x"]);
        expect(devices.has("carol")).toBe(false);
        const [x] = devices.get("bob") ?? [];
        const stored = await store.getDevice({ userId: "bob", deviceId: "x" });
        expect(x).toMatchObject({
          userId: "bob",
          deviceId: "x",
          identityKey: stored?.identityKey,
          identityKeyCreatedAt: stored?.identityKeyCreatedAt,
          previousIdentityKey: undefined,
        });
      });
    });

    describe("one-time prekeys", () => {
      it("stores an upload, skips keys already stored and clears the last-resort flag", async () => {
        const input = registration(alice, { oneTimePrekeys: 1 });
        await store.registerDevice(input);
        await store.claimPrekeyBundles(claim("alice"));
        await store.claimPrekeyBundles(claim("alice"));
        expect((await store.getDevice(alice))?.lastResortPrekeyUsed).toBe(true);

        const batch = oneTimePrekeys(10, 5);
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: batch,
            maxOneTimePrekeys: 1000,
            now: T0,
          }),
        ).toEqual({
          kind: "uploaded",
          count: 5,
          inserted: 5,
        });
        expect((await store.getDevice(alice))?.lastResortPrekeyUsed).toBe(false);
        // A retry of the same batch (plus one new key) stores only the new key.
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: [...batch, ...oneTimePrekeys(15, 1)],
            maxOneTimePrekeys: 1000,
            now: T0,
          }),
        ).toEqual({ kind: "uploaded", count: 6, inserted: 1 });
      });

      it("refuses ids used by another one-time prekey or by the last-resort prekey, storing nothing", async () => {
        const input = registration(alice, { oneTimePrekeys: 3 });
        await store.registerDevice(input);
        const otherKey = oneTimePrekeys(2, 1);
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: [...oneTimePrekeys(50, 1), ...otherKey],
            maxOneTimePrekeys: 1000,
            now: T0,
          }),
        ).toEqual({ kind: "prekey_id_in_use", keyId: 2 });
        const lastResortId = input.lastResortPrekey.keyId;
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: [{ keyId: lastResortId, publicKey: input.lastResortPrekey.publicKey }],
            maxOneTimePrekeys: 1000,
            now: T0,
          }),
        ).toEqual({ kind: "prekey_id_in_use", keyId: lastResortId });
        expect((await store.getDevice(alice))?.oneTimePrekeyCount).toBe(3);
      });

      it("refuses an upload that would exceed the limit, and uploads to unknown devices", async () => {
        await store.registerDevice(registration(alice, { oneTimePrekeys: 8 }));
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: oneTimePrekeys(100, 3),
            maxOneTimePrekeys: 10,
            now: T0,
          }),
        ).toEqual({ kind: "prekey_limit", count: 8 });
        expect(
          await store.uploadOneTimePrekeys({
            address: alice,
            prekeys: oneTimePrekeys(100, 2),
            maxOneTimePrekeys: 10,
            now: T0,
          }),
        ).toEqual({ kind: "uploaded", count: 10, inserted: 2 });
        expect(
          await store.uploadOneTimePrekeys({
            address: { userId: "alice", deviceId: "tablet" },
            prekeys: oneTimePrekeys(1, 1),
            maxOneTimePrekeys: 10,
            now: T0,
          }),
        ).toEqual({ kind: "device_not_found" });
      });
    });

    describe("claims", () => {
      it("hands out each one-time prekey once, lowest id first, then the last-resort prekey", async () => {
        const input = registration(alice, { oneTimePrekeys: 3 });
        await store.registerDevice(input);
        const ids: Array<number | undefined> = [];
        for (let i = 0; i < 3; i++) {
          const result = await store.claimPrekeyBundles(claim("alice"));
          if (result.kind !== "claimed") throw new Error(result.kind);
          const [bundle] = result.bundles;
          expect(bundle?.identityKey).toEqual(input.identityKey);
          expect(bundle?.signedPrekey).toEqual(input.signedPrekey);
          ids.push(oneTimeIdOf(bundle));
          expect(bundle?.prekey).toEqual({ kind: "one_time", prekey: input.oneTimePrekeys[i] });
        }
        expect(ids).toEqual([1, 2, 3]);
        expect((await store.getDevice(alice))?.oneTimePrekeyCount).toBe(0);
        expect((await store.getDevice(alice))?.lastResortPrekeyUsed).toBe(false);
        for (let i = 0; i < 2; i++) {
          const result = await store.claimPrekeyBundles(claim("alice"));
          expect(result).toEqual({
            kind: "claimed",
            bundles: [
              {
                deviceId: "phone",
                identityKey: input.identityKey,
                signedPrekey: input.signedPrekey,
                prekey: { kind: "last_resort", prekey: input.lastResortPrekey },
              },
            ],
          });
        }
        expect((await store.getDevice(alice))?.lastResortPrekeyUsed).toBe(true);
      });

      it("claims for every active device, or the requested ones in order, leaving out the caller", async () => {
        for (const [i, id] of ["a", "b", "c"].entries()) {
          await store.registerDevice(registration({ userId: "alice", deviceId: id }, { now: at(i) }));
        }
        const all = await store.claimPrekeyBundles(claim("alice", { excludeDeviceId: "b" }));
        expect(all.kind === "claimed" && all.bundles.map((b) => b.deviceId)).toEqual(["a", "c"]);
        const some = await store.claimPrekeyBundles(claim("alice", { deviceIds: ["c", "a"] }));
        expect(some.kind === "claimed" && some.bundles.map((b) => b.deviceId)).toEqual(["c", "a"]);
        const counts = await Promise.all(
          ["a", "b", "c"].map((d) => store.getDevice({ userId: "alice", deviceId: d })),
        );
        expect(counts.map((d) => d?.oneTimePrekeyCount)).toEqual([8, 10, 8]);
      });

      it("claims nothing when a requested device is not active", async () => {
        await store.registerDevice(registration(alice));
        expect(await store.claimPrekeyBundles(claim("alice", { deviceIds: ["phone", "tablet"] }))).toEqual({
          kind: "device_not_found",
          deviceId: "tablet",
        });
        expect((await store.getDevice(alice))?.oneTimePrekeyCount).toBe(10);
        expect(await store.claimPrekeyBundles(claim("nobody"))).toEqual({ kind: "claimed", bundles: [] });
      });

      it("never hands out a one-time prekey twice under concurrent claims", async () => {
        const input = registration(alice, { oneTimePrekeys: 30 });
        await store.registerDevice(input);
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) => store.claimPrekeyBundles(claim("alice", { now: at(i) }))),
        );
        const bundles = results.map((r) => {
          if (r.kind !== "claimed" || r.bundles.length !== 1) throw new Error("expected one bundle");
          return r.bundles[0] as PrekeyBundle;
        });
        const oneTime = bundles.flatMap((b) => (b.prekey.kind === "one_time" ? [b.prekey.prekey.keyId] : []));
        expect(oneTime).toHaveLength(30);
        expect(new Set(oneTime).size).toBe(30);
        expect(new Set(oneTime)).toEqual(new Set(input.oneTimePrekeys.map((k) => k.keyId)));
        expect(bundles.filter((b) => b.prekey.kind === "last_resort")).toHaveLength(20);
        expect((await store.getDevice(alice))?.oneTimePrekeyCount).toBe(0);
      });

      it("writes PrekeysLow below the watermark or on a last-resort answer, at most once per interval", async () => {
        await store.registerDevice(registration(alice, { oneTimePrekeys: 12 }));
        await drainEvents();
        const claimAt = async (ms: number) => store.claimPrekeyBundles(claim("alice", { now: at(ms) }));
        // 12 -> 11 -> 10: not below 10 yet.
        await claimAt(0);
        await claimAt(1);
        expect((await drainEvents()).prekeysLow).toEqual([]);
        // 10 -> 9: below; told once.
        await claimAt(2);
        const { prekeysLow: low } = await drainEvents();
        expect(low).toHaveLength(1);
        expect(low[0]).toMatchObject({
          device: alice,
          oneTimePrekeyCount: 9,
          lowWatermark: 10,
          lastResortPrekeyUsed: false,
        });
        expect(timestampDate(low[0]?.detectedAt ?? ({} as never))).toEqual(at(2));
        // The rest of the hour: nothing more, even when the last-resort prekey is served.
        for (let i = 3; i < 15; i++) await claimAt(i);
        expect((await drainEvents()).prekeysLow).toEqual([]);
        // An hour after the last event: told again, with the last-resort flag.
        await claimAt(2 + HOUR);
        const { prekeysLow: later } = await drainEvents();
        expect(later).toHaveLength(1);
        expect(later[0]).toMatchObject({ oneTimePrekeyCount: 0, lastResortPrekeyUsed: true });
        const pending = await store.outbox.pending(10);
        expect(pending).toEqual([]);
      });

      it("keys PrekeysLow by user/device and KeyChanged by user", async () => {
        await store.registerDevice(registration(alice, { oneTimePrekeys: 0 }));
        await store.claimPrekeyBundles(claim("alice"));
        const pending = await store.outbox.pending(10);
        expect(pending.map((r) => [r.topic, r.key])).toEqual([
          [Topics.keys, "alice"],
          [Topics.prekeys, "alice/phone"],
        ]);
      });
    });

    describe("rotation", () => {
      it("rotates the identity key with a grace period, replacing every prekey", async () => {
        const input = registration(alice, { oneTimePrekeys: 5 });
        await store.registerDevice(input);
        await drainEvents();
        const next = deviceKeys({ oneTimePrekeys: 2, firstOneTimeId: 500 });
        const now = at(HOUR);
        const validUntil = at(HOUR + 7 * DAY);
        const rotate = {
          address: alice,
          identityKey: next.identityKey,
          signedPrekey: next.signedPrekey,
          lastResortPrekey: next.lastResortPrekey,
          oneTimePrekeys: next.oneTimePrekeys,
          now,
          validUntil,
          traceparent: "",
        };
        expect(await store.rotateIdentityKey(rotate)).toEqual({
          kind: "rotated",
          effectiveAt: now,
          previousValidUntil: validUntil,
          oneTimePrekeyCount: 2,
          repeated: false,
        });
        const device = await store.getDevice(alice);
        expect(device?.identityKey).toEqual(next.identityKey);
        expect(device?.identityKeyCreatedAt).toEqual(now);
        expect(device?.previousIdentityKey).toEqual({ publicKey: input.identityKey, validUntil });
        expect(device?.previousSignedPrekey).toEqual({ ...input.signedPrekey, validUntil });
        expect(device?.previousLastResortPrekey).toEqual({ ...input.lastResortPrekey, validUntil });
        expect(device?.keyVersion).toBe(2);
        // A lookup of many users' devices shows the same identity, the previous key included.
        const [identity] = (await store.activeDevices(["alice"])).get("alice") ?? [];
        expect(identity).toMatchObject({
          userId: "alice",
          deviceId: alice.deviceId,
          identityKey: next.identityKey,
          identityKeyCreatedAt: now,
          previousIdentityKey: { publicKey: input.identityKey, validUntil },
        });
        const claimed = await store.claimPrekeyBundles(claim("alice"));
        expect(claimed.kind === "claimed" && oneTimeIdOf(claimed.bundles[0])).toBe(500);
        const { keyChanged } = await drainEvents();
        expect(keyChanged).toHaveLength(1);
        expect(keyChanged[0]?.kind).toBe(KeyChangeKind.IDENTITY_ROTATED);
        expect(keyChanged[0]?.identityKey).toEqual(next.identityKey);
        expect(keyChanged[0]?.keyVersion).toBe(2n);
        expect(timestampDate(keyChanged[0]?.previousValidUntil ?? ({} as never))).toEqual(validUntil);

        // Repeating it answers the same and changes nothing.
        expect(
          await store.rotateIdentityKey({ ...rotate, now: at(2 * HOUR), validUntil: at(3 * DAY) }),
        ).toEqual({
          kind: "rotated",
          effectiveAt: now,
          previousValidUntil: validUntil,
          oneTimePrekeyCount: 1,
          repeated: true,
        });
        expect((await drainEvents()).keyChanged).toEqual([]);

        // A second rotation keeps only the key it replaces.
        const third = deviceKeys({ oneTimePrekeys: 0 });
        await store.rotateIdentityKey({
          ...rotate,
          identityKey: third.identityKey,
          signedPrekey: third.signedPrekey,
          lastResortPrekey: third.lastResortPrekey,
          oneTimePrekeys: [],
          now: at(2 * HOUR),
          validUntil: at(2 * HOUR),
        });
        const after = await store.getDevice(alice);
        expect(after?.previousIdentityKey).toEqual({ publicKey: next.identityKey, validUntil: at(2 * HOUR) });
        expect(after?.oneTimePrekeyCount).toBe(0);
        expect(after?.keyVersion).toBe(3);
      });

      it("refuses an identity rotation to the current key when it was never rotated, and unknown devices", async () => {
        const input = registration(alice);
        await store.registerDevice(input);
        const rotate = {
          address: alice,
          identityKey: input.identityKey,
          signedPrekey: input.signedPrekey,
          lastResortPrekey: input.lastResortPrekey,
          oneTimePrekeys: [],
          now: T0,
          validUntil: T0,
          traceparent: "",
        };
        expect(await store.rotateIdentityKey(rotate)).toEqual({ kind: "identity_unchanged" });
        expect(
          await store.rotateIdentityKey({ ...rotate, address: { userId: "alice", deviceId: "x" } }),
        ).toEqual({
          kind: "device_not_found",
        });
      });

      it("rotates the signed prekey, and optionally the last-resort prekey, with a grace period", async () => {
        const input = registration(alice);
        await store.registerDevice(input);
        await drainEvents();
        const identity = input.keys.identity;
        const now = at(DAY);
        const validUntil = at(8 * DAY);
        const rotate = {
          address: alice,
          identityKey: input.identityKey,
          signedPrekey: signedPrekey(identity, 2),
          lastResortPrekey: undefined,
          now,
          validUntil,
          traceparent: "",
        };
        expect(await store.rotateSignedPrekey(rotate)).toEqual({
          kind: "rotated",
          effectiveAt: now,
          previousSignedPrekeyId: 1,
          previousLastResortPrekeyId: 0,
          previousValidUntil: validUntil,
          repeated: false,
        });
        const device = await store.getDevice(alice);
        expect(device?.signedPrekey).toEqual({ ...rotate.signedPrekey, createdAt: now });
        expect(device?.previousSignedPrekey).toEqual({ ...input.signedPrekey, validUntil });
        expect(device?.lastResortPrekey).toEqual({ ...input.lastResortPrekey, createdAt: T0 });
        const claimed = await store.claimPrekeyBundles(claim("alice", { now }));
        expect(claimed.kind === "claimed" && claimed.bundles[0]?.signedPrekey).toEqual(rotate.signedPrekey);
        const { keyChanged } = await drainEvents();
        expect(keyChanged.map((e) => [e.kind, e.keyVersion])).toEqual([
          [KeyChangeKind.SIGNED_PREKEY_ROTATED, 2n],
        ]);
        expect(keyChanged[0]?.identityKey).toEqual(input.identityKey);
        expect(timestampDate(keyChanged[0]?.previousValidUntil ?? ({} as never))).toEqual(validUntil);

        // A repeat answers the same, without an event.
        expect(await store.rotateSignedPrekey({ ...rotate, now: at(2 * DAY) })).toMatchObject({
          kind: "rotated",
          effectiveAt: now,
          previousSignedPrekeyId: 1,
          previousValidUntil: validUntil,
          repeated: true,
        });
        expect((await drainEvents()).keyChanged).toEqual([]);

        // Both at once.
        const lastResort = signedPrekey(identity, 200_000);
        const both = await store.rotateSignedPrekey({
          ...rotate,
          signedPrekey: signedPrekey(identity, 3),
          lastResortPrekey: lastResort,
          now: at(3 * DAY),
        });
        expect(both).toMatchObject({ previousSignedPrekeyId: 2, previousLastResortPrekeyId: 100_000 });
        expect((await store.getDevice(alice))?.lastResortPrekey).toEqual({
          ...lastResort,
          createdAt: at(3 * DAY),
        });
        expect((await drainEvents()).keyChanged.map((e) => e.keyVersion)).toEqual([3n]);
      });

      it("refuses key ids in use and a changed identity key", async () => {
        const input = registration(alice, { oneTimePrekeys: 3 });
        await store.registerDevice(input);
        const identity = input.keys.identity;
        const base = {
          address: alice,
          identityKey: input.identityKey,
          lastResortPrekey: undefined,
          now: T0,
          validUntil: at(DAY),
          traceparent: "",
        };
        // The current signed prekey's id with another key.
        expect(await store.rotateSignedPrekey({ ...base, signedPrekey: signedPrekey(identity, 1) })).toEqual({
          kind: "prekey_id_in_use",
          keyId: 1,
        });
        // The previous one's, during its grace period.
        await store.rotateSignedPrekey({ ...base, signedPrekey: signedPrekey(identity, 2) });
        expect(await store.rotateSignedPrekey({ ...base, signedPrekey: signedPrekey(identity, 1) })).toEqual({
          kind: "prekey_id_in_use",
          keyId: 1,
        });
        // A last-resort id held by a one-time prekey.
        expect(
          await store.rotateSignedPrekey({
            ...base,
            signedPrekey: signedPrekey(identity, 5),
            lastResortPrekey: signedPrekey(identity, 2),
          }),
        ).toEqual({ kind: "prekey_id_in_use", keyId: 2 });
        // Signed by a key that is no longer the identity key.
        expect(
          await store.rotateSignedPrekey({
            ...base,
            identityKey: generateKeyPair().publicKey,
            signedPrekey: signedPrekey(identity, 9),
          }),
        ).toEqual({ kind: "identity_changed" });
        expect(
          await store.rotateSignedPrekey({
            ...base,
            address: { userId: "alice", deviceId: "x" },
            signedPrekey: signedPrekey(identity, 9),
          }),
        ).toEqual({ kind: "device_not_found" });
      });
    });
  });
}
