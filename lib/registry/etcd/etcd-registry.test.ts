import type { Server, Socket } from "node:net";
import { connect, createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets, uniqueTestName } from "../../engines.ts";
import { isParleyError } from "../../errors.ts";
import { createLogger } from "../../logging.ts";
import { describeRegistryContract } from "../registry.contract.ts";
import type { EdgeHost, RegistryEvent } from "../registry.ts";
import type { EtcdHostLease, EtcdRegistryOptions } from "./etcd-registry.ts";
import { createEtcdRegistry } from "./etcd-registry.ts";

const targets = engineTargets();
const logger = createLogger("etcd-registry-test", "silent");

/** A TCP proxy to etcd that a test can cut (drop every connection) or block (refuse new ones too). */
async function startProxy(target: URL) {
  const sockets = new Set<Socket>();
  let blocked = false;
  const server: Server = createServer((downstream) => {
    if (blocked) {
      downstream.destroy();
      return;
    }
    const upstream = connect(Number(target.port), target.hostname);
    for (const socket of [downstream, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        downstream.destroy();
        upstream.destroy();
      });
    }
    downstream.pipe(upstream).pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const cut = () => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    url: `http://127.0.0.1:${port}`,
    cut,
    block() {
      blocked = true;
      cut();
    },
    async close() {
      cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

async function waitUntil(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const host = (hostId: string): Omit<EdgeHost, "startedAt"> => ({
  hostId,
  pushAddress: "127.0.0.1:1",
  publicUrl: "http://edge.example",
  state: "serving",
  load: 0,
});

describe.runIf(targets !== undefined)("etcd registry", () => {
  const endpoint = new URL(targets?.etcdEndpoints[0] ?? "http://127.0.0.1:2379");
  const runPrefix = `${uniqueTestName("parley_test_registry")}/`;
  let client: Etcd3 | undefined;
  let next = 0;
  const shared = () => {
    if (client === undefined) throw new Error("the etcd client opens in beforeAll");
    return client;
  };
  const freshPrefix = () => `${runPrefix}${next++}/`;
  const make = (options: Partial<EtcdRegistryOptions> = {}) =>
    createEtcdRegistry({
      client: shared(),
      keyPrefix: freshPrefix(),
      logger,
      defaultTtlMs: 5_000,
      ...options,
    });

  beforeAll(async () => {
    client = new Etcd3({ hosts: [...(targets?.etcdEndpoints ?? [])], dialTimeout: 3_000 });
    await client.maintenance.status();
  });

  afterAll(async () => {
    if (client === undefined) return;
    // Everything lives under leases the tests revoke; this only sweeps what a failed test left.
    await client.delete().prefix(runPrefix);
    client.close();
  });

  // The expiry test asks for 1 s; etcd grants whole seconds, at least its minimum TTL (2 s with
  // the default 100 ms heartbeat), and the adapter goes by what it granted.
  describeRegistryContract(
    "etcd",
    async () => ({
      registry: make(),
      suspendKeepAlive: (lease) => (lease as EtcdHostLease).suspendKeepAlive(),
    }),
    { expiryTtlMs: 1_000 },
  );

  it("rounds a sub-second TTL up to what etcd grants, and keeps such a lease alive", async () => {
    const registry = make();
    const lease = await registry.registerHost(host("h"), { ttlMs: 300 });
    expect(lease.ttlMs % 1_000).toBe(0);
    expect(lease.ttlMs).toBeGreaterThanOrEqual(1_000);
    let lost = false;
    void lease.lost.then(() => {
      lost = true;
    });
    // Past the TTL etcd granted: only renewals can have kept it.
    await sleep(lease.ttlMs + 500);
    expect(lost).toBe(false);
    expect((await registry.hosts()).map((h) => h.hostId)).toEqual(["h"]);
    await registry.close();
  });

  it("takes over a host id registered again before the old lease ended (a restarted pod)", async () => {
    const registry = make();
    const old = await registry.registerHost({ ...host("edge-1"), pushAddress: "10.0.0.1:7000" });
    await old.assignDevice("u", "phone");
    const fresh = await registry.registerHost({ ...host("edge-1"), pushAddress: "10.0.0.2:7000" });
    expect((await registry.hosts()).map((h) => h.pushAddress)).toEqual(["10.0.0.2:7000"]);
    await expect(old.update({ load: 3 })).rejects.toSatisfy(
      (err: unknown) => isParleyError(err) && err.reason === "HOST_SUPERSEDED",
    );
    await old.revoke();
    expect(await registry.route("u", "phone")).toBeUndefined();
    expect((await registry.hosts()).map((h) => h.pushAddress)).toEqual(["10.0.0.2:7000"]);
    await fresh.update({ load: 3 });
    expect((await registry.hosts()).map((h) => h.load)).toEqual([3]);
    await registry.close();
  });

  it("pages snapshots and host lists at one revision", async () => {
    const keyPrefix = freshPrefix();
    const registry = make({ keyPrefix, pageSize: 3 });
    const leases = await Promise.all(["a", "b", "c", "d"].map((id) => registry.registerHost(host(id))));
    const revisions: bigint[] = [];
    for (let i = 0; i < 10; i++)
      revisions.push(await (leases[i % 4] as EtcdHostLease).assignDevice("u", `d${i}`));
    expect((await registry.hosts()).map((h) => h.hostId)).toEqual(["a", "b", "c", "d"]);
    const events: RegistryEvent[] = [];
    const watch = await registry.watch((e) => events.push(e));
    expect(events.map((e) => (e.kind === "route_put" ? e.route.revision : e.kind))).toEqual([
      "host_put",
      "host_put",
      "host_put",
      "host_put",
      ...revisions,
    ]);
    await watch.close();
    await registry.close();
  });

  it("resumes a watch whose connection broke from the last revision it saw: nothing lost, nothing twice", async () => {
    const keyPrefix = freshPrefix();
    const proxy = await startProxy(endpoint);
    const writer = make({ keyPrefix });
    const reader = createEtcdRegistry({ endpoints: [proxy.url], keyPrefix, logger, callTimeoutMs: 1_000 });
    try {
      const lease = await writer.registerHost(host("h"));
      const events: RegistryEvent[] = [];
      await reader.watch((e) => events.push(e));
      const revisions: bigint[] = [];
      for (let i = 0; i < 30; i++) {
        revisions.push(await lease.assignDevice("u", `d${i}`));
        if (i % 10 === 4) proxy.cut();
      }
      const last = revisions.at(-1);
      await waitUntil(
        () => events.some((e) => e.kind === "route_put" && e.route.revision === last),
        "the watch to catch up",
      );
      expect(events.flatMap((e) => (e.kind === "route_put" ? [e.route.revision] : []))).toEqual(revisions);
    } finally {
      await reader.close();
      await writer.close();
      await proxy.close();
    }
  });

  it("declares a lease lost when no renewal got through for its TTL and etcd cannot be reached", async () => {
    const keyPrefix = freshPrefix();
    const proxy = await startProxy(endpoint);
    const cutOff = createEtcdRegistry({ endpoints: [proxy.url], keyPrefix, logger, callTimeoutMs: 500 });
    const observer = make({ keyPrefix });
    try {
      const lease = await cutOff.registerHost(host("h"), { ttlMs: 1_000 });
      await lease.assignDevice("u", "phone");
      const blockedAt = Date.now();
      proxy.block();
      await lease.lost;
      // Never before a TTL without renewal, and not long after.
      expect(Date.now() - blockedAt).toBeGreaterThan(lease.ttlMs - lease.ttlMs / 3 - 100);
      expect(Date.now() - blockedAt).toBeLessThan(lease.ttlMs + 3_000);
      await expect(lease.assignDevice("u", "phone")).rejects.toSatisfy(
        (err: unknown) => isParleyError(err) && err.reason === "LEASE_NOT_FOUND",
      );
      // etcd, which heard nothing either, expires the host and its route on its own.
      await waitUntil(async () => (await observer.hosts()).length === 0, "etcd to expire the lease", 5_000);
      expect(await observer.route("u", "phone")).toBeUndefined();
    } finally {
      await cutOff.close();
      await observer.close();
      await proxy.close();
    }
  });

  it("revokes on close only the leases it granted and still holds", async () => {
    const keyPrefix = freshPrefix();
    const mine = make({ keyPrefix });
    const theirs = make({ keyPrefix });
    const kept = await theirs.registerHost(host("theirs"));
    await kept.assignDevice("u", "laptop");
    const gone = await mine.registerHost(host("mine"));
    await gone.assignDevice("u", "phone");
    await mine.close();
    expect((await theirs.hosts()).map((h) => h.hostId)).toEqual(["theirs"]);
    expect(await theirs.route("u", "phone")).toBeUndefined();
    expect((await theirs.route("u", "laptop"))?.hostId).toBe("theirs");
    await theirs.close();
  });
});
