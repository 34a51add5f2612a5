import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { v7 as uuidv7 } from "uuid";
import { beforeEach, describe, expect, it } from "vitest";
import {
  KeyChangedSchema,
  KeyChangeKind,
  PrekeysLowSchema,
} from "../../../gen/parley/events/v1/key_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import type { ErrorCode } from "../../../lib/errors.ts";
import { ParleyError } from "../../../lib/errors.ts";
import type { RateRule } from "../../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../../lib/rate-limit.ts";
import { ConversationView } from "../../../lib/views/conversation-view.ts";
import { createConversationRelationships } from "../adapters/memory/conversation-relationships.ts";
import { createSqliteKeyStore } from "../adapters/sqlite/sqlite-key-store.ts";
import { DEFAULT_CLAIM_RATES } from "../service.ts";
import {
  deviceKeys,
  fakeClock,
  generateKeyPair,
  oneTimePrekeys,
  signedPrekey,
  xeddsaSign,
} from "../test-support.ts";
import type { KeyStore } from "./key-store.ts";
import type { KeyDomain } from "./keys.ts";
import { createKeyDomain } from "./keys.ts";
import type { DeviceAddress, KeySettings } from "./model.ts";
import { xeddsaVerify } from "./xeddsa.ts";

const DAY = 86_400_000;

async function expectError(promise: Promise<unknown>, code: ErrorCode, reason: string): Promise<ParleyError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ParleyError);
  const parley = err as ParleyError;
  expect({ code: parley.code, reason: parley.reason }).toEqual({ code, reason });
  return parley;
}

function setup(
  settings: Partial<KeySettings> = {},
  claimRates: { readonly perTarget?: RateRule; readonly perCaller?: RateRule } = {},
) {
  const clock = fakeClock();
  const store: KeyStore = createSqliteKeyStore({ path: ":memory:" });
  const view = new ConversationView();
  const limiter = (rule: RateRule) => createMemoryRateLimiter(rule, { now: () => clock.now().getTime() });
  const keys: KeyDomain = createKeyDomain({
    store,
    relationships: createConversationRelationships(view),
    claimLimiters: {
      perTarget: limiter(claimRates.perTarget ?? DEFAULT_CLAIM_RATES.perTarget),
      perCaller: limiter(claimRates.perCaller ?? DEFAULT_CLAIM_RATES.perCaller),
    },
    now: clock.now,
    settings,
  });
  let version = 0n;
  const conversation = (...members: string[]) => {
    const conversationId = uuidv7();
    view.applyMembership({
      conversationId,
      kind: members.length === 2 ? "direct" : "group",
      version: ++version,
      memberUserIds: members,
      deleted: false,
    });
    return conversationId;
  };
  const block = (blocker: string, blocked: string) =>
    view.applyBlock({ blocker, blocked, isBlocked: true, version: ++version });
  const register = async (address: DeviceAddress, keysOf = deviceKeys()) => {
    await keys.registerDevice({ address, displayName: "", traceparent: "", ...keysOf });
    return keysOf;
  };
  const events = async () => {
    const pending = await store.outbox.pending(10_000);
    await store.outbox.markPublished(pending.map((r) => r.id));
    return {
      keyChanged: pending
        .filter((r) => r.topic === Topics.keys)
        .map((r) => fromBinary(KeyChangedSchema, r.payload)),
      prekeysLow: pending
        .filter((r) => r.topic === Topics.prekeys)
        .map((r) => fromBinary(PrekeysLowSchema, r.payload)),
    };
  };
  return { clock, store, view, keys, conversation, block, register, events };
}

const phone = (userId: string, deviceId = "phone") => ({ userId, deviceId });

describe("key domain", () => {
  let t: ReturnType<typeof setup>;
  beforeEach(() => {
    t = setup();
  });

  describe("devices", () => {
    it("refuses a sixth active device with FAILED_PRECONDITION DEVICE_LIMIT_REACHED", async () => {
      for (let i = 1; i <= 5; i++) await t.register(phone("alice", `d${i}`));
      await expectError(t.register(phone("alice", "d6")), "failed_precondition", "DEVICE_LIMIT_REACHED");
      await t.keys.removeDevice(phone("alice", "d3"), "");
      await t.register(phone("alice", "d6"));
      const page = await t.keys.listDevices("alice", 0, "");
      expect(page.devices.map((d) => d.deviceId)).toEqual(["d1", "d2", "d4", "d5", "d6"]);
    });

    it("refuses prekeys whose signature does not verify, storing nothing", async () => {
      const keys = deviceKeys();
      const stranger = generateKeyPair();
      const err = await expectError(
        t.keys.registerDevice({
          address: phone("alice"),
          displayName: "",
          traceparent: "",
          ...keys,
          signedPrekey: signedPrekey(stranger, 1),
        }),
        "invalid_argument",
        "INVALID_SIGNATURE",
      );
      expect(err.violations.map((v) => v.field)).toEqual(["signed_prekey.signature"]);
      const tampered = Uint8Array.from(keys.lastResortPrekey.signature);
      tampered[10] = (tampered[10] ?? 0) ^ 1;
      await expectError(
        t.keys.registerDevice({
          address: phone("alice"),
          displayName: "",
          traceparent: "",
          ...keys,
          lastResortPrekey: { ...keys.lastResortPrekey, signature: tampered },
        }),
        "invalid_argument",
        "INVALID_SIGNATURE",
      );
      expect(await t.keys.deviceStatus(phone("alice"))).toEqual({ state: "unknown" });
      expect(await t.store.outbox.pending(10)).toEqual([]);
    });

    it("accepts signatures in the XEdDSA paper's form (sign bit forced to 0) too", async () => {
      const keys = deviceKeys();
      const spec = {
        ...keys.signedPrekey,
        signature: xeddsaSign(keys.identity.privateKey, keys.signedPrekey.publicKey, { mode: "spec" }),
      };
      await t.keys.registerDevice({
        address: phone("alice"),
        displayName: "",
        traceparent: "",
        ...keys,
        signedPrekey: spec,
      });
      expect((await t.keys.getPrekeyCount(phone("alice"))).signedPrekeyId).toBe(1);
    });

    it("is idempotent for the same identity key and refuses another one with ALREADY_EXISTS", async () => {
      const keys = await t.register(phone("alice"));
      const again = await t.keys.registerDevice({
        address: phone("alice"),
        displayName: "",
        traceparent: "",
        ...keys,
      });
      expect(again.oneTimePrekeyCount).toBe(10);
      await expectError(t.register(phone("alice")), "already_exists", "DEVICE_ALREADY_REGISTERED");
    });

    it("removes a device: NOT_FOUND afterwards, revoked, and KeyChanged DEVICE_REMOVED", async () => {
      await t.register(phone("alice"));
      await t.events();
      t.clock.advance(1000);
      const { removedAt } = await t.keys.removeDevice(phone("alice"), "");
      expect(removedAt).toEqual(t.clock.now());
      expect(await t.keys.deviceStatus(phone("alice"))).toMatchObject({ state: "removed", removedAt });
      await expectError(t.keys.removeDevice(phone("alice"), ""), "not_found", "DEVICE_NOT_FOUND");
      await expectError(t.keys.getPrekeyCount(phone("alice")), "not_found", "DEVICE_NOT_FOUND");
      const { keyChanged } = await t.events();
      expect(keyChanged.map((e) => e.kind)).toEqual([KeyChangeKind.DEVICE_REMOVED]);
    });

    it("pages through devices with opaque tokens and refuses forged ones", async () => {
      for (let i = 1; i <= 4; i++) {
        await t.register(phone("alice", `d${i}`));
        t.clock.advance(1);
      }
      const first = await t.keys.listDevices("alice", 3, "");
      expect(first.devices.map((d) => d.deviceId)).toEqual(["d1", "d2", "d3"]);
      expect(first.nextPageToken).not.toBe("");
      const second = await t.keys.listDevices("alice", 3, first.nextPageToken);
      expect(second.devices.map((d) => d.deviceId)).toEqual(["d4"]);
      expect(second.nextPageToken).toBe("");
      await expectError(
        t.keys.listDevices("alice", 3, "not-a-token"),
        "invalid_argument",
        "INVALID_PAGE_TOKEN",
      );
    });
  });

  describe("one-time prekeys", () => {
    it("maps upload refusals to PREKEY_ID_IN_USE, PREKEY_LIMIT_REACHED and NOT_FOUND", async () => {
      const limited = setup({ maxOneTimePrekeys: 12 });
      await limited.register(phone("alice"));
      await expectError(
        limited.keys.uploadOneTimePrekeys(phone("alice"), oneTimePrekeys(1, 1)),
        "already_exists",
        "PREKEY_ID_IN_USE",
      );
      await expectError(
        limited.keys.uploadOneTimePrekeys(phone("alice"), oneTimePrekeys(20, 3)),
        "failed_precondition",
        "PREKEY_LIMIT_REACHED",
      );
      expect(await limited.keys.uploadOneTimePrekeys(phone("alice"), oneTimePrekeys(20, 2))).toBe(12);
      await expectError(
        limited.keys.uploadOneTimePrekeys(phone("alice", "tablet"), oneTimePrekeys(1, 1)),
        "not_found",
        "DEVICE_NOT_FOUND",
      );
    });
  });

  describe("bundles", () => {
    it("gives a connection one bundle per device, each with a distinct one-time prekey and valid signatures", async () => {
      await t.register(phone("alice", "phone"));
      t.clock.advance(1);
      await t.register(phone("alice", "laptop"));
      t.conversation("alice", "bob");
      const seen = new Set<string>();
      for (let i = 0; i < 3; i++) {
        const bundles = await t.keys.getPrekeyBundles({
          caller: phone("bob"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "",
        });
        expect(bundles.map((b) => b.deviceId)).toEqual(["phone", "laptop"]);
        for (const bundle of bundles) {
          expect(
            xeddsaVerify(bundle.identityKey, bundle.signedPrekey.publicKey, bundle.signedPrekey.signature),
          ).toBe(true);
          if (bundle.prekey.kind !== "one_time") throw new Error("expected a one-time prekey");
          seen.add(`${bundle.deviceId}/${bundle.prekey.prekey.keyId}`);
        }
      }
      expect(seen.size).toBe(6);
    });

    it("answers NOT_FOUND alike for a user the caller may not see and for a user who does not exist", async () => {
      await t.register(phone("alice"));
      const hidden = await expectError(
        t.keys.getPrekeyBundles({
          caller: phone("carol"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "",
        }),
        "not_found",
        "USER_NOT_FOUND",
      );
      const unknown = await expectError(
        t.keys.getPrekeyBundles({
          caller: phone("carol"),
          targetUserId: "nobody",
          deviceIds: [],
          traceparent: "",
        }),
        "not_found",
        "USER_NOT_FOUND",
      );
      expect(hidden.message.replace("alice", "X")).toBe(unknown.message.replace("nobody", "X"));
      // Fellow group members may; a user who blocked the caller hides again.
      t.conversation("alice", "carol", "dave");
      expect(
        await t.keys.getPrekeyBundles({
          caller: phone("carol"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "",
        }),
      ).toHaveLength(1);
      t.block("alice", "carol");
      await expectError(
        t.keys.getPrekeyBundles({
          caller: phone("carol"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "",
        }),
        "not_found",
        "USER_NOT_FOUND",
      );
      // Nothing was claimed by the refused calls: 10 - 1.
      expect((await t.keys.getPrekeyCount(phone("alice"))).oneTimePrekeyCount).toBe(9);
    });

    it("leaves the calling device out of its own user's bundles and refuses inactive requested devices", async () => {
      await t.register(phone("alice", "phone"));
      await t.register(phone("alice", "laptop"));
      const own = await t.keys.getPrekeyBundles({
        caller: phone("alice", "phone"),
        targetUserId: "alice",
        deviceIds: [],
        traceparent: "",
      });
      expect(own.map((b) => b.deviceId)).toEqual(["laptop"]);
      await expectError(
        t.keys.getPrekeyBundles({
          caller: phone("alice", "phone"),
          targetUserId: "alice",
          deviceIds: ["laptop", "tablet"],
          traceparent: "",
        }),
        "not_found",
        "DEVICE_NOT_FOUND",
      );
    });

    it("serves the last-resort prekey when none is left and writes PrekeysLow", async () => {
      const keys = await t.register(phone("alice"), deviceKeys({ oneTimePrekeys: 1 }));
      t.conversation("alice", "bob");
      await t.events();
      const claimOne = async () => {
        const [bundle] = await t.keys.getPrekeyBundles({
          caller: phone("bob"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        });
        return bundle;
      };
      expect((await claimOne())?.prekey.kind).toBe("one_time");
      const first = await t.events();
      expect(first.prekeysLow).toHaveLength(1);
      expect(first.prekeysLow[0]).toMatchObject({
        device: phone("alice"),
        oneTimePrekeyCount: 0,
        lowWatermark: 10,
        lastResortPrekeyUsed: false,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      });

      t.clock.advance(3_600_000);
      const bundle = await claimOne();
      expect(bundle?.prekey).toEqual({ kind: "last_resort", prekey: keys.lastResortPrekey });
      if (bundle?.prekey.kind !== "last_resort") throw new Error("expected the last-resort prekey");
      expect(
        xeddsaVerify(bundle.identityKey, bundle.prekey.prekey.publicKey, bundle.prekey.prekey.signature),
      ).toBe(true);
      const second = await t.events();
      expect(second.prekeysLow).toHaveLength(1);
      expect(second.prekeysLow[0]).toMatchObject({ oneTimePrekeyCount: 0, lastResortPrekeyUsed: true });
      expect(timestampDate(second.prekeysLow[0]?.detectedAt ?? ({} as never))).toEqual(t.clock.now());
      expect(await t.keys.getPrekeyCount(phone("alice"))).toMatchObject({
        oneTimePrekeyCount: 0,
        lastResortPrekeyUsed: true,
        lowWatermark: 10,
        maxOneTimePrekeys: 1000,
      });

      // Within the hour: no second event.
      await claimOne();
      expect((await t.events()).prekeysLow).toEqual([]);
      // An upload clears the flag.
      expect(await t.keys.uploadOneTimePrekeys(phone("alice"), oneTimePrekeys(50, 20))).toBe(20);
      expect((await t.keys.getPrekeyCount(phone("alice"))).lastResortPrekeyUsed).toBe(false);
    });

    it("limits how many bundles one caller claims from one user (RESOURCE_EXHAUSTED with a retry delay)", async () => {
      // 10 bundles from one user, refilled over an hour.
      const limited = setup({}, { perTarget: { burst: 10, perSecond: 10 / 3600 } });
      await limited.register(phone("alice"));
      limited.conversation("alice", "bob");
      const claim = () =>
        limited.keys.getPrekeyBundles({
          caller: phone("bob"),
          targetUserId: "alice",
          deviceIds: [],
          traceparent: "",
        });
      await claim();
      await claim();
      const err = await expectError(claim(), "resource_exhausted", "PREKEY_CLAIM_RATE_LIMITED");
      expect(err.retryDelayMs).toBeGreaterThan(0);
      limited.clock.advance(err.retryDelayMs ?? 0);
      await claim();
    });

    it("limits a caller's claims over all targets, counting each requested device", async () => {
      // 6 bundles in all, refilled over an hour; each target's own budget is the default 50.
      const limited = setup({}, { perCaller: { burst: 6, perSecond: 6 / 3600 } });
      await limited.register(phone("alice"));
      await limited.register(phone("carol"));
      limited.conversation("alice", "bob");
      limited.conversation("carol", "bob");
      const claim = (targetUserId: string, deviceIds: string[]) =>
        limited.keys.getPrekeyBundles({ caller: phone("bob"), targetUserId, deviceIds, traceparent: "" });
      await claim("alice", ["phone"]);
      await claim("carol", []); // all devices: counts as the 5 a user may have
      const err = await expectError(
        claim("alice", ["phone"]),
        "resource_exhausted",
        "PREKEY_CLAIM_RATE_LIMITED",
      );
      expect(err.retryDelayMs).toBe(600_000);
      limited.clock.advance(600_000);
      await claim("carol", ["phone"]);
    });
  });

  describe("identity keys", () => {
    it("returns visible users' devices in request order and an empty list for everyone else", async () => {
      await t.register(phone("alice"));
      await t.register(phone("bob"));
      await t.register(phone("carol"));
      t.conversation("alice", "bob");
      const users = await t.keys.getIdentityKeys("alice", ["carol", "bob", "alice", "nobody"]);
      expect(users.map((u) => [u.userId, u.devices.map((d) => d.deviceId)])).toEqual([
        ["carol", []],
        ["bob", ["phone"]],
        ["alice", ["phone"]],
        ["nobody", []],
      ]);
    });
  });

  describe("rotation", () => {
    it("rotates the identity key: old and new both visible until the grace period ends, KeyChanged written", async () => {
      const old = await t.register(phone("alice"));
      t.conversation("alice", "bob");
      await t.events();
      t.clock.advance(DAY);
      const rotatedAt = t.clock.now();
      const next = deviceKeys({ oneTimePrekeys: 5, firstOneTimeId: 1000 });
      const result = await t.keys.rotateIdentityKey({
        address: phone("alice"),
        identityKey: next.identityKey,
        signedPrekey: next.signedPrekey,
        lastResortPrekey: next.lastResortPrekey,
        oneTimePrekeys: next.oneTimePrekeys,
        gracePeriodMs: undefined,
        traceparent: "",
      });
      const graceEnd = new Date(rotatedAt.getTime() + 7 * DAY);
      expect(result).toMatchObject({
        effectiveAt: rotatedAt,
        previousValidUntil: graceEnd,
        oneTimePrekeyCount: 5,
      });

      const identity = async () => (await t.keys.getIdentityKeys("bob", ["alice"]))[0]?.devices[0];
      expect(await identity()).toEqual({
        deviceId: "phone",
        identityKey: next.identityKey,
        identityKeyCreatedAt: rotatedAt,
        previousIdentityKey: { publicKey: old.identityKey, validUntil: graceEnd },
      });
      const { keyChanged } = await t.events();
      expect(keyChanged).toHaveLength(1);
      expect(keyChanged[0]).toMatchObject({
        kind: KeyChangeKind.IDENTITY_ROTATED,
        identityKey: next.identityKey,
        keyVersion: 2n,
      });
      expect(timestampDate(keyChanged[0]?.previousValidUntil ?? ({} as never))).toEqual(graceEnd);
      expect(timestampDate(keyChanged[0]?.effectiveAt ?? ({} as never))).toEqual(rotatedAt);

      // Bundles carry the new keys at once; the old one-time prekeys are gone.
      const [bundle] = await t.keys.getPrekeyBundles({
        caller: phone("bob"),
        targetUserId: "alice",
        deviceIds: [],
        traceparent: "",
      });
      expect(bundle?.identityKey).toEqual(next.identityKey);
      expect(bundle?.prekey.kind === "one_time" && bundle.prekey.prekey.keyId).toBe(1000);

      t.clock.advance(7 * DAY - 1);
      expect((await identity())?.previousIdentityKey).toBeDefined();
      t.clock.advance(1);
      expect((await identity())?.previousIdentityKey).toBeUndefined();
    });

    it("refuses prekeys signed by the old identity key, and a zero grace period ends the old key at once", async () => {
      const old = await t.register(phone("alice"));
      const next = deviceKeys();
      await expectError(
        t.keys.rotateIdentityKey({
          address: phone("alice"),
          identityKey: next.identityKey,
          signedPrekey: signedPrekey(old.identity, 7),
          lastResortPrekey: next.lastResortPrekey,
          oneTimePrekeys: [],
          gracePeriodMs: undefined,
          traceparent: "",
        }),
        "invalid_argument",
        "INVALID_SIGNATURE",
      );
      const rotate = {
        address: phone("alice"),
        identityKey: next.identityKey,
        signedPrekey: next.signedPrekey,
        lastResortPrekey: next.lastResortPrekey,
        oneTimePrekeys: [],
        gracePeriodMs: 0,
        traceparent: "",
      };
      const result = await t.keys.rotateIdentityKey(rotate);
      expect(result.previousValidUntil).toEqual(t.clock.now());
      expect(
        (await t.keys.getIdentityKeys("alice", ["alice"]))[0]?.devices[0]?.previousIdentityKey,
      ).toBeUndefined();
      // Repeating the same rotation answers the same.
      t.clock.advance(5000);
      expect(await t.keys.rotateIdentityKey(rotate)).toMatchObject({
        effectiveAt: result.effectiveAt,
        previousValidUntil: result.previousValidUntil,
      });
      await expectError(
        t.keys.rotateIdentityKey({ ...rotate, gracePeriodMs: 31 * DAY }),
        "invalid_argument",
        "INVALID_GRACE_PERIOD",
      );
    });

    it("rotates the signed prekey with a grace period: new bundles at once, KeyChanged SIGNED_PREKEY_ROTATED", async () => {
      const keys = await t.register(phone("alice"));
      t.conversation("alice", "bob");
      await t.events();
      t.clock.advance(DAY);
      const next = signedPrekey(keys.identity, 2);
      const result = await t.keys.rotateSignedPrekey({
        address: phone("alice"),
        signedPrekey: next,
        lastResortPrekey: undefined,
        gracePeriodMs: 2 * DAY,
        traceparent: "",
      });
      expect(result).toMatchObject({
        effectiveAt: t.clock.now(),
        previousSignedPrekeyId: 1,
        previousLastResortPrekeyId: 0,
        previousValidUntil: new Date(t.clock.now().getTime() + 2 * DAY),
      });
      const [bundle] = await t.keys.getPrekeyBundles({
        caller: phone("bob"),
        targetUserId: "alice",
        deviceIds: [],
        traceparent: "",
      });
      expect(bundle?.signedPrekey).toEqual(next);
      expect(await t.keys.getPrekeyCount(phone("alice"))).toMatchObject({
        signedPrekeyId: 2,
        signedPrekeyCreatedAt: t.clock.now(),
      });
      const { keyChanged } = await t.events();
      expect(keyChanged.map((e) => [e.kind, e.keyVersion])).toEqual([
        [KeyChangeKind.SIGNED_PREKEY_ROTATED, 2n],
      ]);
      expect(keyChanged[0]?.identityKey).toEqual(keys.identityKey);

      await expectError(
        t.keys.rotateSignedPrekey({
          address: phone("alice"),
          signedPrekey: signedPrekey(keys.identity, 1),
          lastResortPrekey: undefined,
          gracePeriodMs: undefined,
          traceparent: "",
        }),
        "already_exists",
        "PREKEY_ID_IN_USE",
      );
      await expectError(
        t.keys.rotateSignedPrekey({
          address: phone("alice"),
          signedPrekey: signedPrekey(generateKeyPair(), 3),
          lastResortPrekey: undefined,
          gracePeriodMs: undefined,
          traceparent: "",
        }),
        "invalid_argument",
        "INVALID_SIGNATURE",
      );
      await expectError(
        t.keys.rotateSignedPrekey({
          address: phone("alice", "tablet"),
          signedPrekey: signedPrekey(keys.identity, 3),
          lastResortPrekey: undefined,
          gracePeriodMs: undefined,
          traceparent: "",
        }),
        "not_found",
        "DEVICE_NOT_FOUND",
      );
    });
  });
});
