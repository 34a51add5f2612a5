// The registry port's contract: every Registry adapter (in-process, etcd) runs this suite from its
// own test file. Host, user and device ids are unique per test, so an adapter on a shared etcd needs
// no cleanup beyond revoking its leases.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isParleyError } from "../errors.ts";
import type { DeviceRoute, EdgeHost, HostLease, Registry, RegistryEvent } from "./registry.ts";

/** A registry under test, and the fault the suite injects. */
export interface RegistryHarness {
  readonly registry: Registry;
  /**
   * Stops renewing `lease` without revoking it, as a host that crashed, hung or was cut off from
   * the registry would (etcd: stop the keep-alive stream).
   */
  suspendKeepAlive(lease: HostLease): void;
  /** Called after each test, after the suite revoked what it registered. */
  close?(): Promise<void>;
}

export interface RegistryContractOptions {
  /** TTL of the leases the expiry tests let lapse. Default 200 ms (etcd needs seconds). */
  readonly expiryTtlMs?: number;
  /** How long to wait for an expected event before failing. Default 10 s. */
  readonly timeoutMs?: number;
}

/** A local cache folded from watch events, as delivery keeps one. */
class FoldedCache {
  readonly hosts = new Map<string, EdgeHost>();
  readonly routes = new Map<string, DeviceRoute>();
  readonly events: RegistryEvent[] = [];

  apply = (event: RegistryEvent): void => {
    this.events.push(event);
    switch (event.kind) {
      case "host_put":
        this.hosts.set(event.host.hostId, event.host);
        break;
      case "host_removed":
        this.hosts.delete(event.hostId);
        break;
      case "route_put":
        this.routes.set(`${event.route.userId}/${event.route.deviceId}`, event.route);
        break;
      case "route_removed":
        this.routes.delete(`${event.userId}/${event.deviceId}`);
        break;
    }
  };
}

function revisionOf(event: RegistryEvent): bigint | undefined {
  if (event.kind === "route_put") return event.route.revision;
  if (event.kind === "route_removed") return event.revision;
  return undefined;
}

export function describeRegistryContract(
  name: string,
  makeHarness: () => Promise<RegistryHarness>,
  options: RegistryContractOptions = {},
): void {
  const expiryTtlMs = options.expiryTtlMs ?? 200;
  const timeoutMs = options.timeoutMs ?? 10_000;

  describe(`Registry contract: ${name}`, () => {
    let harness: RegistryHarness;
    let registry: Registry;
    let leases: HostLease[] = [];
    let watches: Array<{ close(): Promise<void> }> = [];
    let prefix = "";

    beforeEach(async () => {
      harness = await makeHarness();
      registry = harness.registry;
      leases = [];
      watches = [];
      prefix = randomUUID().slice(0, 8);
    });

    afterEach(async () => {
      for (const watch of watches) await watch.close();
      for (const lease of leases) await lease.revoke().catch(() => undefined);
      await registry.close();
      await harness.close?.();
    });

    const hostId = (label: string) => `${label}-${prefix}`;
    const userId = (label: string) => `${label}-${prefix}`;

    async function register(label: string, ttlMs?: number): Promise<HostLease> {
      const lease = await registry.registerHost(
        {
          hostId: hostId(label),
          pushAddress: `127.0.0.1:${label.length + 9000}`,
          publicUrl: `http://${label}.example`,
          state: "serving",
          load: 0,
        },
        ttlMs === undefined ? {} : { ttlMs },
      );
      leases.push(lease);
      return lease;
    }

    async function watch(): Promise<FoldedCache> {
      const cache = new FoldedCache();
      watches.push(await registry.watch(cache.apply));
      return cache;
    }

    async function waitFor(condition: () => boolean, what: string): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!condition()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await sleep(5);
      }
    }

    /** The registry's own state, restricted to this test's hosts and devices. */
    async function state() {
      const hosts = (await registry.hosts()).filter((h) => h.hostId.endsWith(prefix));
      return new Map(hosts.map((h) => [h.hostId, h]));
    }

    it("lists a registered host with its start time, and its updates", async () => {
      const before = Date.now();
      const lease = await register("a");
      const host = (await state()).get(hostId("a"));
      expect(host).toMatchObject({
        hostId: hostId("a"),
        pushAddress: "127.0.0.1:9001",
        publicUrl: "http://a.example",
        state: "serving",
        load: 0,
      });
      expect(host?.startedAt.getTime()).toBeGreaterThanOrEqual(before - 1_000);

      await lease.update({ state: "draining", load: 42 });
      expect((await state()).get(hostId("a"))).toMatchObject({ state: "draining", load: 42 });
    });

    it("routes a device to the host that assigned it last, with increasing revisions", async () => {
      const a = await register("a");
      const b = await register("b");
      const first = await a.assignDevice(userId("u"), "phone");
      expect(first).toBeGreaterThan(0n);
      expect(await registry.route(userId("u"), "phone")).toMatchObject({
        userId: userId("u"),
        deviceId: "phone",
        hostId: hostId("a"),
        revision: first,
      });

      const second = await b.assignDevice(userId("u"), "phone");
      expect(second).toBeGreaterThan(first);
      expect(await registry.route(userId("u"), "phone")).toMatchObject({
        hostId: hostId("b"),
        revision: second,
      });
      expect(await registry.route(userId("u"), "laptop")).toBeUndefined();
    });

    it("fences releases: only the route's own host at its own revision removes it", async () => {
      const a = await register("a");
      const b = await register("b");
      const atA = await a.assignDevice(userId("u"), "phone");
      const atB = await b.assignDevice(userId("u"), "phone");

      // The stream on A closes late, after the device reconnected to B: B's route stays.
      await a.releaseDevice(userId("u"), "phone", atA);
      expect((await registry.route(userId("u"), "phone"))?.hostId).toBe(hostId("b"));
      // B with a stale revision removes nothing either.
      await b.releaseDevice(userId("u"), "phone", atA);
      expect((await registry.route(userId("u"), "phone"))?.revision).toBe(atB);

      // A reconnect to the same host gets a new revision; the old stream's release keeps it.
      const again = await b.assignDevice(userId("u"), "phone");
      await b.releaseDevice(userId("u"), "phone", atB);
      expect((await registry.route(userId("u"), "phone"))?.revision).toBe(again);

      await b.releaseDevice(userId("u"), "phone", again);
      expect(await registry.route(userId("u"), "phone")).toBeUndefined();
    });

    it("revoking a lease removes the host and its routes at once, but not routes that moved away", async () => {
      const cache = await watch();
      const a = await register("a");
      const b = await register("b");
      await a.assignDevice(userId("u"), "phone");
      await a.assignDevice(userId("u"), "laptop");
      await a.assignDevice(userId("v"), "tablet");
      await b.assignDevice(userId("v"), "tablet");

      await a.revoke();
      expect((await state()).has(hostId("a"))).toBe(false);
      expect((await state()).has(hostId("b"))).toBe(true);
      expect(await registry.route(userId("u"), "phone")).toBeUndefined();
      expect(await registry.route(userId("u"), "laptop")).toBeUndefined();
      expect((await registry.route(userId("v"), "tablet"))?.hostId).toBe(hostId("b"));

      await waitFor(() => !cache.hosts.has(hostId("a")), "host_removed of a");
      expect(cache.routes.has(`${userId("u")}/phone`)).toBe(false);
      expect(cache.routes.get(`${userId("v")}/tablet`)?.hostId).toBe(hostId("b"));
      const removals = cache.events.filter((e) => e.kind === "route_removed");
      expect(removals.map((e) => (e.kind === "route_removed" ? e.deviceId : "")).sort()).toEqual([
        "laptop",
        "phone",
      ]);

      await expect(a.assignDevice(userId("u"), "phone")).rejects.toSatisfy(
        (err: unknown) => isParleyError(err) && err.reason === "LEASE_NOT_FOUND",
      );
      // Releasing on a dead lease is harmless: its routes are gone already.
      await a.releaseDevice(userId("u"), "phone", 1n);
    });

    it("expires a host that stops renewing its lease, with all its routes; a renewed lease lives on", async () => {
      const cache = await watch();
      const dying = await register("dying", expiryTtlMs);
      const living = await register("living", expiryTtlMs);
      await dying.assignDevice(userId("u"), "phone");
      await dying.assignDevice(userId("v"), "phone");
      await living.assignDevice(userId("w"), "phone");
      // Watches may deliver after the write returned (etcd's do): count from when all three arrived.
      await waitFor(() => cache.routes.size === 3, "the three routes");
      const before = cache.events.length;
      let lostLiving = false;
      void living.lost.then(() => {
        lostLiving = true;
      });

      harness.suspendKeepAlive(dying);
      await dying.lost;

      // Both leases had the same time to lapse; only the one whose keep-alive stopped did.
      expect([...(await state()).keys()]).toEqual([hostId("living")]);
      expect(await registry.route(userId("u"), "phone")).toBeUndefined();
      expect(await registry.route(userId("v"), "phone")).toBeUndefined();
      expect((await registry.route(userId("w"), "phone"))?.hostId).toBe(hostId("living"));
      expect(lostLiving).toBe(false);
      await expect(dying.assignDevice(userId("u"), "phone")).rejects.toSatisfy(
        (err: unknown) => isParleyError(err) && err.reason === "LEASE_NOT_FOUND",
      );
      await expect(dying.update({ load: 1 })).rejects.toThrow();

      await waitFor(() => !cache.hosts.has(hostId("dying")), "host_removed of the expired host");
      const expiry = cache.events.slice(before);
      expect(expiry.map((e) => e.kind).sort()).toEqual(["host_removed", "route_removed", "route_removed"]);
      expect(cache.routes.size).toBe(1);

      // The host can come back under a new lease.
      const back = await register("dying");
      await back.assignDevice(userId("u"), "phone");
      expect((await registry.route(userId("u"), "phone"))?.hostId).toBe(hostId("dying"));
    });

    it("watch gives a snapshot as puts, then every change in revision order: enough for a complete cache", async () => {
      const a = await register("a");
      const b = await register("b");
      await a.assignDevice(userId("u"), "phone");
      await b.assignDevice(userId("u"), "laptop");
      const early = await watch();
      // The snapshot: hosts, then routes, only puts.
      expect(early.events.map((e) => e.kind)).toEqual(["host_put", "host_put", "route_put", "route_put"]);

      let rev = 0n;
      for (let i = 0; i < 40; i++) {
        const lease = i % 2 === 0 ? a : b;
        const device = `d${i % 7}`;
        if (i % 5 === 4) {
          const route = await registry.route(userId("u"), device);
          if (route !== undefined) await lease.releaseDevice(userId("u"), device, route.revision);
        } else {
          rev = await lease.assignDevice(userId(i % 3 === 0 ? "u" : "v"), device);
        }
        if (i === 20) await b.update({ state: "draining" });
      }
      const late = await watch();
      const c = await register("c");
      await c.assignDevice(userId("v"), "d1");
      await a.revoke();
      const last = await c.assignDevice(userId("w"), "x");
      expect(last).toBeGreaterThan(rev);

      for (const cache of [early, late]) {
        await waitFor(() => cache.routes.get(`${userId("w")}/x`)?.revision === last, "the last write");
        // Live events come in revision order.
        const revisions = cache.events.map(revisionOf).filter((r) => r !== undefined);
        const liveStart = cache === early ? 2 : 0;
        const live = revisions.slice(liveStart);
        for (let i = 1; i < live.length; i++) {
          expect(live[i]).toBeGreaterThanOrEqual(live[i - 1] as bigint);
        }
        // Folding the events gives exactly what the registry holds.
        const hosts = await state();
        expect(new Map([...cache.hosts].filter(([id]) => id.endsWith(prefix)))).toEqual(hosts);
        for (const [key, route] of cache.routes) {
          const [user = "", device = ""] = key.split("/");
          expect(await registry.route(user, device)).toEqual(route);
        }
        for (const user of ["u", "v", "w"]) {
          for (let d = 0; d < 7; d++) {
            const route = await registry.route(userId(user), `d${d}`);
            expect(cache.routes.get(`${userId(user)}/d${d}`)).toEqual(route);
          }
        }
      }
      expect(early.hosts.get(hostId("b"))?.state).toBe("draining");
    });

    it("stops a watch on close", async () => {
      const a = await register("a");
      const cache = new FoldedCache();
      const handle = await registry.watch(cache.apply);
      await a.assignDevice(userId("u"), "phone");
      await waitFor(() => cache.routes.size === 1, "the first route");
      await handle.close();
      const seen = cache.events.length;
      await a.assignDevice(userId("u"), "laptop");
      // A second watch sees the later write, so the first would have had time to see it as well.
      const witness = await watch();
      expect(witness.routes.size).toBe(2);
      await a.assignDevice(userId("u"), "tablet");
      await waitFor(() => witness.routes.size === 3, "the witness's live event");
      expect(cache.events.length).toBe(seen);
    });
  });
}
