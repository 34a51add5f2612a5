import { fromBinary } from "@bufbuild/protobuf";
import cassandra from "cassandra-driver";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { KeyChangedSchema, KeyChangeKind } from "../../../../gen/parley/events/v1/key_events_pb.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../../../lib/broker/embedded-broker.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import { openCassandra } from "../../../../lib/cassandra/session.ts";
import { engineTargets, uniqueTestName } from "../../../../lib/engines.ts";
import { createLogger } from "../../../../lib/logging.ts";
import { describeKeyStoreContract } from "../../domain/key-store.contract.ts";
import type { ClaimInput, KeyStore } from "../../domain/key-store.ts";
import type { DeviceAddress } from "../../domain/model.ts";
import { createKeyService } from "../../service.ts";
import { deviceKeys } from "../../test-support.ts";
import type { CassandraKeyStoreOptions } from "./cassandra-key-store.ts";
import { createCassandraKeyStore } from "./cassandra-key-store.ts";

const targets = engineTargets();
const logger = createLogger("cassandra-key-store-test", "silent");

describe.runIf(targets)("cassandra key store (real Cassandra)", () => {
  const keyspace = uniqueTestName("parley_key");
  // Two clients: two processes' worth of connections to the same tables.
  let client: CassandraClient;
  let otherClient: CassandraClient;
  let stores = 0;
  // Each store gets its own tables in the file's keyspace.
  const freshPrefix = () => `s${stores++}_`;
  const open = (options: Partial<CassandraKeyStoreOptions> & { tablePrefix: string }) =>
    createCassandraKeyStore({ client, logger, ...options });

  beforeAll(async () => {
    if (!targets) return;
    const connect = () =>
      openCassandra({
        contactPoints: targets.cassandraContactPoints,
        localDataCenter: targets.cassandraDatacenter,
        keyspace,
        logger,
      });
    client = await connect();
    otherClient = await connect();
  });
  afterAll(async () => {
    await client?.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`);
    await Promise.all([client?.shutdown(), otherClient?.shutdown()]);
  });

  describeKeyStoreContract("cassandra", () => open({ tablePrefix: freshPrefix() }));

  const register = (store: KeyStore, address: DeviceAddress, oneTimePrekeys: number) => {
    const keys = deviceKeys({ oneTimePrekeys });
    return store
      .registerDevice({
        address,
        displayName: "",
        identityKey: keys.identityKey,
        signedPrekey: keys.signedPrekey,
        lastResortPrekey: keys.lastResortPrekey,
        oneTimePrekeys: keys.oneTimePrekeys,
        maxDevices: 5,
        maxOneTimePrekeys: 1000,
        now: new Date(),
        traceparent: "",
      })
      .then((result) => {
        expect(result.kind).toBe("registered");
        return keys;
      });
  };
  const claim = (userId: string, overrides: Partial<ClaimInput> = {}): ClaimInput => ({
    userId,
    deviceIds: undefined,
    excludeDeviceId: undefined,
    now: new Date(),
    lowWatermark: 10,
    prekeysLowIntervalMs: 3_600_000,
    traceparent: "",
    ...overrides,
  });
  /** "<device>:<key id>" of each bundle, "<device>:last_resort" for the last-resort prekey. */
  const claimedKeys = async (store: KeyStore, input: ClaimInput) => {
    const result = await store.claimPrekeyBundles(input);
    if (result.kind !== "claimed") throw new Error(result.kind);
    return result.bundles.map(
      (b) => `${b.deviceId}:${b.prekey.kind === "one_time" ? b.prekey.prekey.keyId : "last_resort"}`,
    );
  };

  // One claim per batch is the worst case: every claim races every other for the user's partition.
  it.each([
    ["claims grouped per batch", 64],
    ["one claim per batch", 1],
  ])(
    "hands out each one-time prekey once when two processes claim at the same time (%s)",
    async (_, maxClaimGroup) => {
      const tablePrefix = freshPrefix();
      const here = await open({ tablePrefix, maxClaimGroup });
      const there = await createCassandraKeyStore({
        client: otherClient,
        logger,
        tablePrefix,
        maxClaimGroup,
      });
      await register(here, { userId: "alice", deviceId: "phone" }, 40);
      await register(here, { userId: "alice", deviceId: "laptop" }, 25);

      // 60 claims of every device and 20 of the phone alone, half from each process, spread over
      // 100 ms so that each process commits many groups of claims, racing the other's.
      const later = <T>(run: () => Promise<T>) =>
        new Promise<T>((resolve, reject) => {
          setTimeout(() => run().then(resolve, reject), Math.random() * 100);
        });
      const claims = [
        ...Array.from({ length: 60 }, (_, i) =>
          later(() => claimedKeys(i % 2 === 0 ? here : there, claim("alice"))),
        ),
        ...Array.from({ length: 20 }, (_, i) =>
          later(() => claimedKeys(i % 2 === 0 ? here : there, claim("alice", { deviceIds: ["phone"] }))),
        ),
      ];
      const handedOut = (await Promise.all(claims)).flat();

      const phone = handedOut.filter((k) => k.startsWith("phone:"));
      const laptop = handedOut.filter((k) => k.startsWith("laptop:"));
      expect(phone).toHaveLength(80);
      expect(laptop).toHaveLength(60);
      const oneTime = (keys: string[]) => keys.filter((k) => !k.endsWith(":last_resort"));
      // Every uploaded key handed out, none twice, and the rest answered with the last-resort key.
      expect(new Set(oneTime(phone))).toEqual(
        new Set(Array.from({ length: 40 }, (_, i) => `phone:${i + 1}`)),
      );
      expect(oneTime(phone)).toHaveLength(40);
      expect(new Set(oneTime(laptop))).toEqual(
        new Set(Array.from({ length: 25 }, (_, i) => `laptop:${i + 1}`)),
      );
      expect(oneTime(laptop)).toHaveLength(25);
      for (const deviceId of ["phone", "laptop"]) {
        const device = await there.getDevice({ userId: "alice", deviceId });
        expect(device?.oneTimePrekeyCount).toBe(0);
        expect(device?.lastResortPrekeyUsed).toBe(true);
      }
      // Later claims find nothing left either.
      expect(await claimedKeys(there, claim("alice"))).toEqual(["phone:last_resort", "laptop:last_resort"]);
    },
  );

  describe("a store that dies between applying a change and writing its events", () => {
    const crashing = () => {
      let armed = false;
      return {
        arm: () => {
          armed = true;
        },
        afterCommit: () => {
          if (!armed) return;
          armed = false;
          throw new Error("simulated crash");
        },
      };
    };
    const topics = async (store: KeyStore) => (await store.outbox.pending(100)).map((r) => r.topic);

    it("leaves the events with the change: a later read writes them, once", async () => {
      const tablePrefix = freshPrefix();
      const crash = crashing();
      const dying = await open({ tablePrefix, faults: crash });
      const reader = await createCassandraKeyStore({
        client: otherClient,
        logger,
        tablePrefix,
        staleCommitMs: 0,
      });
      crash.arm();
      await expect(register(dying, { userId: "bob", deviceId: "phone" }, 3)).rejects.toThrow(
        "simulated crash",
      );
      // Applied, but its event is not in the outbox yet.
      expect(await topics(reader)).toEqual([]);
      expect(await reader.deviceStatus({ userId: "bob", deviceId: "phone" })).toMatchObject({
        state: "active",
      });

      const pending = await reader.outbox.pending(100);
      expect(pending.map((r) => fromBinary(KeyChangedSchema, r.payload).kind)).toEqual([
        KeyChangeKind.DEVICE_ADDED,
      ]);
      await reader.getDevice({ userId: "bob", deviceId: "phone" });
      await reader.listDevices("bob", { limit: 10 });
      expect(await topics(reader)).toEqual([Topics.keys]);
    });

    it("leaves the events with the change: the next change writes them along with its own", async () => {
      const tablePrefix = freshPrefix();
      const crash = crashing();
      const dying = await open({ tablePrefix, faults: crash });
      // Readers of this store leave young pending events to their committer.
      const next = await createCassandraKeyStore({ client: otherClient, logger, tablePrefix });
      await register(dying, { userId: "carol", deviceId: "phone" }, 0);
      await dying.outbox.markPublished((await dying.outbox.pending(100)).map((r) => r.id));

      // A last-resort answer writes PrekeysLow; the store dies before writing it.
      crash.arm();
      await expect(dying.claimPrekeyBundles(claim("carol"))).rejects.toThrow("simulated crash");
      await next.getDevice({ userId: "carol", deviceId: "phone" });
      expect(await topics(next)).toEqual([]);

      await next.removeDevice({
        address: { userId: "carol", deviceId: "phone" },
        now: new Date(),
        traceparent: "",
      });
      expect(await topics(next)).toEqual([Topics.prekeys, Topics.keys]);
      expect(await next.getDevice({ userId: "carol", deviceId: "phone" })).toBeUndefined();
    });
  });

  describe("a change whose write times out", () => {
    /** The real client, except that one guarded batch fails with a write timeout, applied or not. */
    const timingOut = (applied: boolean) => {
      let armed = false;
      const flaky = new Proxy(client, {
        get(target, property) {
          if (property === "batch") {
            return async (queries: Array<{ query: string; params?: unknown[] }>, options: object) => {
              if (armed && queries.some((q) => q.query.includes("IF version"))) {
                armed = false;
                if (applied) await target.batch(queries, options);
                throw new cassandra.errors.ResponseError(
                  cassandra.types.responseErrorCodes.writeTimeout,
                  "simulated CAS write timeout",
                );
              }
              return target.batch(queries, options);
            };
          }
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === "function" ? value.bind(target) : value;
        },
      });
      return {
        client: flaky,
        arm: () => {
          armed = true;
        },
      };
    };

    it("answers with what the change did when it was applied after all, and retries it when it was not", async () => {
      const tablePrefix = freshPrefix();
      const appliedAnyway = timingOut(true);
      const lost = timingOut(false);
      const first = await createCassandraKeyStore({ client: appliedAnyway.client, logger, tablePrefix });
      const second = await createCassandraKeyStore({ client: lost.client, logger, tablePrefix });
      await register(first, { userId: "dave", deviceId: "phone" }, 5);

      appliedAnyway.arm();
      expect(await claimedKeys(first, claim("dave"))).toEqual(["phone:1"]);
      lost.arm();
      expect(await claimedKeys(second, claim("dave"))).toEqual(["phone:2"]);
      expect(await claimedKeys(first, claim("dave"))).toEqual(["phone:3"]);
      expect((await first.getDevice({ userId: "dave", deviceId: "phone" }))?.oneTimePrekeyCount).toBe(2);

      lost.arm();
      await second.removeDevice({
        address: { userId: "dave", deviceId: "phone" },
        now: new Date(),
        traceparent: "",
      });
      appliedAnyway.arm();
      await register(first, { userId: "dave", deviceId: "phone" }, 1);
      expect(await second.deviceStatus({ userId: "dave", deviceId: "phone" })).toMatchObject({
        state: "active",
        keyVersion: 3,
      });
      expect((await second.getDevice({ userId: "dave", deviceId: "phone" }))?.oneTimePrekeyCount).toBe(1);
      // Each change's events once, although two of them were written by a retry.
      const events = (await first.outbox.pending(100))
        .filter((r) => r.topic === Topics.keys)
        .map((r) => fromBinary(KeyChangedSchema, r.payload));
      expect(events.map((e) => [e.kind, e.keyVersion])).toEqual([
        [KeyChangeKind.DEVICE_ADDED, 1n],
        [KeyChangeKind.DEVICE_REMOVED, 2n],
        [KeyChangeKind.DEVICE_ADDED, 3n],
      ]);
    });
  });

  it("serves the key service: changes made through it reach the broker from the Cassandra outbox", async () => {
    const store = await open({ tablePrefix: freshPrefix() });
    const broker = await createEmbeddedBroker({ path: ":memory:", logger });
    const published: number[] = [];
    const following = await broker.follow(Topics.keys, {}, (m) => {
      published.push(fromBinary(KeyChangedSchema, m.payload).kind);
    });
    const key = await createKeyService({
      store,
      broker,
      logger,
      relationships: { visibleUsers: async () => new Set() },
    });
    try {
      const keys = deviceKeys({ oneTimePrekeys: 2 });
      const { oneTimePrekeyCount } = await key.keys.registerDevice({
        address: { userId: "erin", deviceId: "phone" },
        displayName: "",
        identityKey: keys.identityKey,
        signedPrekey: keys.signedPrekey,
        lastResortPrekey: keys.lastResortPrekey,
        oneTimePrekeys: keys.oneTimePrekeys,
        traceparent: "",
      });
      expect(oneTimePrekeyCount).toBe(2);
      await key.keys.removeDevice({ userId: "erin", deviceId: "phone" }, "");
      await vi.waitFor(() =>
        expect(published).toEqual([KeyChangeKind.DEVICE_ADDED, KeyChangeKind.DEVICE_REMOVED]),
      );
      await vi.waitFor(async () => expect(await store.outbox.pending(10)).toEqual([]));
    } finally {
      await key.stop();
      await following.close();
      await broker.close();
    }
  });
});
