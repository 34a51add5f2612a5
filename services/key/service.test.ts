import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { v7 as uuidv7 } from "uuid";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  ConversationKind,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import type { KeyChanged } from "../../gen/parley/events/v1/key_events_pb.ts";
import { KeyChangedSchema, KeyChangeKind } from "../../gen/parley/events/v1/key_events_pb.ts";
import { DeviceStatus, KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import type { Subscription } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import type { EmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { engineTargets } from "../../lib/engines.ts";
import { toParleyError } from "../../lib/errors.ts";
import type { GrpcServiceClient } from "../../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import { fromGrpcError } from "../../lib/grpc/grpc-error.ts";
import type { GrpcServer } from "../../lib/grpc/server.ts";
import { createGrpcServer } from "../../lib/grpc/server.ts";
import { createLogger } from "../../lib/logging.ts";
import type { RateDecision, RateLimiter } from "../../lib/rate-limit.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { useRedis } from "../../lib/redis/test-support.ts";
import type { RelationshipView } from "./domain/relationship-view.ts";
import { xeddsaVerify } from "./domain/xeddsa.ts";
import type { KeyServiceOptions, KeyServiceParts } from "./service.ts";
import { createKeyService, DEFAULT_CLAIM_RATES } from "./service.ts";
import { deviceKeys, generateKeyPair, oneTimePrekeys, signedPrekey } from "./test-support.ts";

const logger = createLogger("key-test", "silent");
const targets = engineTargets();
/** Everyone may see everyone's keys (so claims reach the limiters without a membership view). */
const everyone: RelationshipView = { visibleUsers: async (_userId, others) => new Set(others) };
/** gRPC decodes bytes into Node Buffers; compare them as plain Uint8Arrays. */
const bytes = (value: Uint8Array | undefined) => new Uint8Array(value ?? []);

async function expectGrpcError(promise: Promise<unknown>, code: string, reason: string) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeDefined();
  const parley = fromGrpcError(err);
  expect({ code: parley.code, reason: parley.reason }).toEqual({ code, reason });
  return parley;
}

describe("key service over gRPC", () => {
  let broker: EmbeddedBroker;
  let key: KeyServiceParts;
  let server: GrpcServer;
  let client: GrpcServiceClient<typeof KeyService>;
  let keyEvents: KeyChanged[];
  let following: Subscription;

  beforeEach(async () => {
    broker = await createEmbeddedBroker({ path: ":memory:", logger });
    keyEvents = [];
    following = await broker.follow(Topics.keys, {}, (m) => {
      keyEvents.push(fromBinary(KeyChangedSchema, m.payload));
    });
    key = await createKeyService({ store: { path: ":memory:" }, broker, logger });
    server = createGrpcServer({ name: "key", services: key.registrations, logger });
    const port = await server.listen("127.0.0.1", 0);
    client = createGrpcClient(KeyService, `127.0.0.1:${port}`);
  });

  afterEach(async () => {
    closeChannel(client);
    await server.shutdown();
    await key.stop();
    await following.close();
    await broker.close();
  });

  /** With the engines on, a Redis for the limiters that replicas share (the cluster profile's). */
  const redisContext = targets === undefined ? undefined : useRedis("key_service");

  /** Another key process on the same broker (its own store in memory), with these limiters. */
  const startReplica = (claimLimiters: NonNullable<KeyServiceOptions["claimLimiters"]>) =>
    createKeyService({ store: { path: ":memory:" }, broker, logger, relationships: everyone, claimLimiters });

  const register = (userId: string, deviceId: string, keys = deviceKeys()) =>
    client.registerDevice({
      device: { userId, deviceId },
      displayName: `${userId}'s ${deviceId}`,
      identityKey: keys.identityKey,
      signedPrekey: keys.signedPrekey,
      lastResortPrekey: keys.lastResortPrekey,
      oneTimePrekeys: keys.oneTimePrekeys,
    });

  it("registers devices and publishes KeyChanged through the outbox relay", async () => {
    const keys = deviceKeys();
    const response = await register("alice", "phone", keys);
    expect(response.oneTimePrekeyCount).toBe(10);
    expect(response.device?.deviceId).toBe("phone");
    expect(response.device?.displayName).toBe("alice's phone");
    expect(bytes(response.device?.identity?.identityKey)).toEqual(keys.identityKey);
    expect(bytes(response.device?.identity?.previousIdentityKey)).toEqual(new Uint8Array(0));

    await vi.waitFor(() => expect(keyEvents).toHaveLength(1));
    expect(keyEvents[0]).toMatchObject({
      kind: KeyChangeKind.DEVICE_ADDED,
      device: { userId: "alice", deviceId: "phone" },
      keyVersion: 1n,
    });
    expect(bytes(keyEvents[0]?.identityKey)).toEqual(keys.identityKey);

    const listed = await client.listDevices({ userId: "alice" });
    expect(listed.devices.map((d) => d.deviceId)).toEqual(["phone"]);
    expect(listed.nextPageToken).toBe("");
  });

  it("maps domain refusals to status codes with ErrorInfo reasons", async () => {
    const keys = deviceKeys();
    await expectGrpcError(
      client.registerDevice({
        device: { userId: "alice", deviceId: "phone" },
        identityKey: keys.identityKey,
        signedPrekey: signedPrekey(generateKeyPair(), 1),
        lastResortPrekey: keys.lastResortPrekey,
      }),
      "invalid_argument",
      "INVALID_SIGNATURE",
    );
    // Protovalidate runs first: a 32-byte identity key never reaches the domain.
    await expectGrpcError(
      client.registerDevice({
        device: { userId: "alice", deviceId: "phone" },
        identityKey: keys.identityKey.subarray(1),
        signedPrekey: keys.signedPrekey,
        lastResortPrekey: keys.lastResortPrekey,
      }),
      "invalid_argument",
      "VALIDATION_FAILED",
    );
    for (let i = 1; i <= 5; i++) await register("alice", `d${i}`);
    await expectGrpcError(register("alice", "d6"), "failed_precondition", "DEVICE_LIMIT_REACHED");
    await expectGrpcError(register("alice", "d1"), "already_exists", "DEVICE_ALREADY_REGISTERED");
    await expectGrpcError(
      client.uploadOneTimePrekeys({
        device: { userId: "alice", deviceId: "d1" },
        oneTimePrekeys: oneTimePrekeys(1, 1),
      }),
      "already_exists",
      "PREKEY_ID_IN_USE",
    );
    await expectGrpcError(
      client.getPrekeyCount({ device: { userId: "alice", deviceId: "nope" } }),
      "not_found",
      "DEVICE_NOT_FOUND",
    );
    await expectGrpcError(
      client.getPrekeyBundles({ device: { userId: "bob", deviceId: "phone" }, targetUserId: "alice" }),
      "not_found",
      "USER_NOT_FOUND",
    );
    await expectGrpcError(
      client.listDevices({ userId: "alice", pageToken: "garbage" }),
      "invalid_argument",
      "INVALID_PAGE_TOKEN",
    );

    const removed = await client.removeDevice({ userId: "alice", deviceId: "d1" });
    expect(removed.removedAt).toBeDefined();
    await expectGrpcError(
      client.removeDevice({ userId: "alice", deviceId: "d1" }),
      "not_found",
      "DEVICE_NOT_FOUND",
    );
    expect(await key.keys.deviceStatus({ userId: "alice", deviceId: "d1" })).toMatchObject({
      state: "removed",
    });
  });

  it("answers GetDeviceStatus: active (since when), removed (since when) or unknown", async () => {
    const registered = await register("alice", "phone");
    const active = await client.getDeviceStatus({ device: { userId: "alice", deviceId: "phone" } });
    expect(active.status).toBe(DeviceStatus.ACTIVE);
    expect(active.registeredAt).toEqual(registered.device?.createdAt);
    expect(active.removedAt).toBeUndefined();
    expect(active.keyVersion).toBe(1n);

    const removed = await client.removeDevice({ userId: "alice", deviceId: "phone" });
    const revoked = await client.getDeviceStatus({ device: { userId: "alice", deviceId: "phone" } });
    expect(revoked.status).toBe(DeviceStatus.REMOVED);
    expect(revoked.removedAt).toEqual(removed.removedAt);
    expect(revoked.registeredAt).toBeUndefined();
    expect(revoked.keyVersion).toBe(2n);

    // Another user's device of the same id is another device.
    const unknown = await client.getDeviceStatus({ device: { userId: "bob", deviceId: "phone" } });
    expect(unknown.status).toBe(DeviceStatus.UNKNOWN);
    expect(unknown.keyVersion).toBe(0n);

    await register("alice", "phone");
    expect((await client.getDeviceStatus({ device: { userId: "alice", deviceId: "phone" } })).status).toBe(
      DeviceStatus.ACTIVE,
    );
    await expectGrpcError(
      client.getDeviceStatus({ device: { userId: "alice", deviceId: "bad/id" } }),
      "invalid_argument",
      "VALIDATION_FAILED",
    );
  });

  it("lets connections claim bundles once membership arrives on the broker", async () => {
    const keys = deviceKeys({ oneTimePrekeys: 1 });
    await register("alice", "phone", keys);
    const claim = () =>
      client.getPrekeyBundles({ device: { userId: "bob", deviceId: "phone" }, targetUserId: "alice" });
    await expectGrpcError(claim(), "not_found", "USER_NOT_FOUND");

    await broker.publish(Topics.memberships, {
      key: "c1",
      payload: toBinary(
        MembershipChangedSchema,
        create(MembershipChangedSchema, {
          eventId: uuidv7(),
          conversationId: uuidv7(),
          kind: ConversationKind.DIRECT,
          version: 1n,
          members: [{ userId: "alice" }, { userId: "bob" }],
        }),
      ),
    });
    await vi.waitFor(async () => {
      const users = await client.getIdentityKeys({ userId: "bob", targetUserIds: ["alice"] });
      expect(users.users[0]?.devices).toHaveLength(1);
    });

    const first = await claim();
    expect(first.bundles).toHaveLength(1);
    const [bundle] = first.bundles;
    expect(bundle?.prekey.case).toBe("oneTimePrekey");
    expect(bundle?.prekey.value?.keyId).toBe(keys.oneTimePrekeys[0]?.keyId);
    expect(
      xeddsaVerify(
        bytes(bundle?.identityKey),
        bytes(bundle?.signedPrekey?.publicKey),
        bytes(bundle?.signedPrekey?.signature),
      ),
    ).toBe(true);
    expect(bytes(bundle?.signedPrekey?.signature)).toEqual(keys.signedPrekey.signature);
    const second = await claim();
    expect(second.bundles[0]?.prekey.case).toBe("lastResortPrekey");
    expect(second.bundles[0]?.prekey.value?.keyId).toBe(keys.lastResortPrekey.keyId);

    const count = await client.getPrekeyCount({ device: { userId: "alice", deviceId: "phone" } });
    expect(count).toMatchObject({
      oneTimePrekeyCount: 0,
      lowWatermark: 10,
      maxOneTimePrekeys: 1000,
      lastResortPrekeyUsed: true,
      signedPrekeyId: keys.signedPrekey.keyId,
    });
  });

  it("rotates keys and reports the previous identity key with its grace period", async () => {
    const keys = deviceKeys();
    await register("alice", "phone", keys);
    const next = deviceKeys({ oneTimePrekeys: 3, firstOneTimeId: 700 });
    const rotated = await client.rotateIdentityKey({
      device: { userId: "alice", deviceId: "phone" },
      identityKey: next.identityKey,
      signedPrekey: next.signedPrekey,
      lastResortPrekey: next.lastResortPrekey,
      oneTimePrekeys: next.oneTimePrekeys,
      gracePeriod: { seconds: 3600n },
    });
    expect(rotated.oneTimePrekeyCount).toBe(3);
    const effective = Number(rotated.effectiveAt?.seconds ?? 0n);
    expect(Number(rotated.previousValidUntil?.seconds ?? 0n) - effective).toBe(3600);

    const [alice] = (await client.getIdentityKeys({ userId: "alice", targetUserIds: ["alice"] })).users;
    expect(bytes(alice?.devices[0]?.identityKey)).toEqual(next.identityKey);
    expect(bytes(alice?.devices[0]?.previousIdentityKey)).toEqual(keys.identityKey);
    expect(alice?.devices[0]?.previousIdentityKeyValidUntil).toEqual(rotated.previousValidUntil);

    await expectGrpcError(
      client.rotateSignedPrekey({
        device: { userId: "alice", deviceId: "phone" },
        signedPrekey: signedPrekey(keys.identity, 5),
      }),
      "invalid_argument",
      "INVALID_SIGNATURE",
    );
    const spk = await client.rotateSignedPrekey({
      device: { userId: "alice", deviceId: "phone" },
      signedPrekey: signedPrekey(next.identity, 5),
      lastResortPrekey: signedPrekey(next.identity, 900_000),
    });
    expect(spk).toMatchObject({ previousSignedPrekeyId: 1, previousLastResortPrekeyId: 100_000 });
    await expectGrpcError(
      client.rotateSignedPrekey({
        device: { userId: "alice", deviceId: "phone" },
        signedPrekey: signedPrekey(next.identity, 5),
      }),
      "already_exists",
      "PREKEY_ID_IN_USE",
    );
    await vi.waitFor(() =>
      expect(keyEvents.map((e) => e.kind)).toEqual([
        KeyChangeKind.DEVICE_ADDED,
        KeyChangeKind.IDENTITY_ROTATED,
        KeyChangeKind.SIGNED_PREKEY_ROTATED,
      ]),
    );
    expect(keyEvents.map((e) => e.keyVersion)).toEqual([1n, 2n, 3n]);
  });

  it("consults the claim limiters it is given, and leaves closing them to the caller", async () => {
    const takes: string[] = [];
    const recording = (name: string, decision: RateDecision) => ({
      async take(key: string, cost = 1) {
        takes.push(`${name} ${key} x${cost}`);
        return decision;
      },
      close: vi.fn(),
    });
    const perTarget = recording("target", { allowed: true });
    const perCaller = recording("caller", { allowed: false, retryAfterMs: 7_000 });
    const replica = await startReplica({ perTarget, perCaller });
    const replicaServer = createGrpcServer({ name: "key-replica", services: replica.registrations, logger });
    const replicaClient = createGrpcClient(
      KeyService,
      `127.0.0.1:${await replicaServer.listen("127.0.0.1", 0)}`,
    );
    try {
      const claim = (deviceIds: string[]) =>
        replicaClient.getPrekeyBundles({
          device: { userId: "bob", deviceId: "phone" },
          targetUserId: "alice",
          deviceIds,
        });
      const all = await expectGrpcError(claim([]), "resource_exhausted", "PREKEY_CLAIM_RATE_LIMITED");
      expect(all.retryDelayMs).toBe(7_000);
      await expectGrpcError(claim(["phone", "laptop"]), "resource_exhausted", "PREKEY_CLAIM_RATE_LIMITED");
      // "All devices" costs the most devices a user may have (5); a list costs its length.
      expect(takes).toEqual(["target bob>alice x5", "caller bob x5", "target bob>alice x2", "caller bob x2"]);
    } finally {
      closeChannel(replicaClient);
      await replicaServer.shutdown();
      await replica.stop();
    }
    expect(perTarget.close).not.toHaveBeenCalled();
    expect(perCaller.close).not.toHaveBeenCalled();
  });

  it.runIf(redisContext !== undefined)(
    "replicas on the cluster's Redis limiters share one prekey claim budget",
    async () => {
      const redis = redisContext?.redis;
      if (redis === undefined) throw new Error("needs Redis");
      // One key prefix per limiter, as every key process of a deployment gets from its main.
      const perTargetPrefix = redisContext?.prefix() ?? "";
      const perCallerPrefix = redisContext?.prefix() ?? "";
      const limiters = (): { perTarget: RateLimiter; perCaller: RateLimiter } => ({
        perTarget: createRedisRateLimiter(redis, DEFAULT_CLAIM_RATES.perTarget, {
          keyPrefix: perTargetPrefix,
        }),
        perCaller: createRedisRateLimiter(redis, DEFAULT_CLAIM_RATES.perCaller, {
          keyPrefix: perCallerPrefix,
        }),
      });
      const replicas = [await startReplica(limiters()), await startReplica(limiters())];
      try {
        const outcomes: string[] = [];
        let retryDelayMs: number | undefined;
        // "All devices" claims cost 5 each: the per-target burst of 50 covers ten, over both replicas.
        for (let i = 0; i < 12; i++) {
          const replica = replicas[i % 2] as KeyServiceParts;
          try {
            await replica.keys.getPrekeyBundles({
              caller: { userId: "bob", deviceId: "phone" },
              targetUserId: "alice",
              deviceIds: [],
              traceparent: "",
            });
            outcomes.push("claimed");
          } catch (err) {
            const parley = toParleyError(err);
            outcomes.push(parley.reason);
            retryDelayMs = parley.retryDelayMs;
          }
        }
        expect(outcomes).toEqual([
          ...Array<string>(10).fill("claimed"),
          "PREKEY_CLAIM_RATE_LIMITED",
          "PREKEY_CLAIM_RATE_LIMITED",
        ]);
        // Five tokens at 50 an hour: six minutes, less what refilled meanwhile.
        expect(retryDelayMs).toBeGreaterThan(300_000);
        expect(retryDelayMs).toBeLessThanOrEqual(360_000);
        // The per-caller bucket, under its own prefix, took only what the per-target one allowed (50
        // of its 6,000, plus what refilled), not the refused claims' 10 more.
        const callerTokens = Number(await redis.hget(`${perCallerPrefix}bob`, "tokens"));
        expect(callerTokens).toBeGreaterThanOrEqual(DEFAULT_CLAIM_RATES.perCaller.burst - 50);
        expect(callerTokens).toBeLessThan(DEFAULT_CLAIM_RATES.perCaller.burst - 40);
      } finally {
        for (const replica of replicas) await replica.stop();
      }
    },
  );
});
