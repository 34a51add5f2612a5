import { describe, expect, it } from "vitest";
import { createLogger } from "../logging.ts";
import type { InProcessHostLease } from "./in-process-registry.ts";
import { createInProcessRegistry } from "./in-process-registry.ts";
import { describeRegistryContract } from "./registry.contract.ts";
import type { RegistryEvent } from "./registry.ts";

const logger = createLogger("registry-test", "silent");

describeRegistryContract("in-process", async () => {
  const registry = createInProcessRegistry({ sweepIntervalMs: 10, logger });
  return {
    registry,
    suspendKeepAlive: (lease) => (lease as InProcessHostLease).suspendKeepAlive(),
  };
});

const host = (hostId: string) => ({
  hostId,
  pushAddress: "127.0.0.1:1",
  publicUrl: "http://edge.example",
  state: "serving" as const,
  load: 0,
});

describe("in-process registry", () => {
  it("expires a suspended lease exactly when its TTL has passed since the last renewal, on a fake clock", async () => {
    let t = 1_000;
    // A sweep interval far beyond the test: only explicit sweeps run.
    const registry = createInProcessRegistry({ now: () => t, sweepIntervalMs: 3_600_000, logger });
    const kept = await registry.registerHost(host("kept"), { ttlMs: 100 });
    const dying = await registry.registerHost(host("dying"), { ttlMs: 100 });
    await dying.assignDevice("u", "phone");

    t += 10_000;
    registry.sweep();
    // A lease whose keep-alive runs is renewed by every sweep, however late the sweep comes.
    expect((await registry.hosts()).map((h) => h.hostId).sort()).toEqual(["dying", "kept"]);

    dying.suspendKeepAlive();
    t += 99;
    registry.sweep();
    expect(await registry.route("u", "phone")).toBeDefined();

    // Resuming in time renews it; suspending again starts a full TTL from there.
    dying.resumeKeepAlive();
    dying.suspendKeepAlive();
    t += 99;
    registry.sweep();
    expect(await registry.route("u", "phone")).toBeDefined();
    t += 1;
    registry.sweep();
    expect(await registry.route("u", "phone")).toBeUndefined();
    expect((await registry.hosts()).map((h) => h.hostId)).toEqual(["kept"]);
    await dying.lost;

    // Resuming after expiry does not bring it back.
    dying.resumeKeepAlive();
    registry.sweep();
    expect((await registry.hosts()).map((h) => h.hostId)).toEqual(["kept"]);
    await kept.revoke();
    await registry.close();
  });

  it("takes over a host id registered again before the old lease ended (a restarted pod)", async () => {
    const registry = createInProcessRegistry({ sweepIntervalMs: 3_600_000, logger });
    const events: RegistryEvent[] = [];
    await registry.watch((e) => events.push(e));
    const old = await registry.registerHost({ ...host("edge-1"), pushAddress: "10.0.0.1:7000" });
    await old.assignDevice("u", "phone");
    const fresh = await registry.registerHost({ ...host("edge-1"), pushAddress: "10.0.0.2:7000" });
    expect((await registry.hosts()).map((h) => h.pushAddress)).toEqual(["10.0.0.2:7000"]);
    await expect(old.update({ load: 3 })).rejects.toThrow(/took over/);

    // The old lease ends: its routes go, the host record (now the new lease's) stays.
    await old.revoke();
    expect(await registry.route("u", "phone")).toBeUndefined();
    expect((await registry.hosts()).map((h) => h.pushAddress)).toEqual(["10.0.0.2:7000"]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(events.map((e) => e.kind)).toEqual(["host_put", "route_put", "host_put", "route_removed"]);
    await fresh.revoke();
    await registry.close();
  });

  it("keeps delivering to other watchers when one handler throws", async () => {
    const registry = createInProcessRegistry({ sweepIntervalMs: 3_600_000, logger });
    const seen: string[] = [];
    await registry.watch(() => {
      throw new Error("boom");
    });
    await registry.watch((e) => seen.push(e.kind));
    const lease = await registry.registerHost(host("a"));
    await lease.assignDevice("u", "phone");
    await new Promise((resolve) => setImmediate(resolve));
    expect(seen).toEqual(["host_put", "route_put"]);
    await registry.close();
  });
});
