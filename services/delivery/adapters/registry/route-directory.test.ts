import { describe, expect, it } from "vitest";
import { createLogger } from "../../../../lib/logging.ts";
import { createInProcessRegistry } from "../../../../lib/registry/in-process-registry.ts";
import { createRegistryRouteDirectory } from "./route-directory.ts";

const logger = createLogger("route-directory-test", "silent");
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));
const host = (hostId: string, pushAddress: string) => ({
  hostId,
  pushAddress,
  publicUrl: "http://edge.example",
  state: "serving" as const,
  load: 0,
});

describe("registry route directory", () => {
  it("follows the registry: routes, moves, releases, and hosts that go or change address", async () => {
    const registry = createInProcessRegistry({ sweepIntervalMs: 3_600_000, logger });
    const a = await registry.registerHost(host("a", "10.0.0.1:7000"));
    await a.assignDevice("u", "phone");
    const gone: string[] = [];
    const routes = await createRegistryRouteDirectory(registry, { onHostGone: (id) => gone.push(id) });
    // The snapshot is in when the directory resolves.
    expect(routes.route({ userId: "u", deviceId: "phone" })?.hostId).toBe("a");
    expect(routes.host("a")).toEqual({ hostId: "a", pushAddress: "10.0.0.1:7000", draining: false });

    const b = await registry.registerHost(host("b", "10.0.0.2:7000"));
    const moved = await b.assignDevice("u", "phone");
    const laptop = await b.assignDevice("u", "laptop");
    await b.update({ state: "draining" });
    await settle();
    expect(routes.route({ userId: "u", deviceId: "phone" })).toEqual({
      device: { userId: "u", deviceId: "phone" },
      hostId: "b",
      revision: moved,
    });
    expect(
      routes
        .devicesOf("u")
        .map((r) => r.device.deviceId)
        .sort(),
    ).toEqual(["laptop", "phone"]);
    expect(routes.host("b")?.draining).toBe(true);

    await b.releaseDevice("u", "laptop", laptop);
    await a.revoke();
    await settle();
    expect(routes.devicesOf("u").map((r) => r.device.deviceId)).toEqual(["phone"]);
    expect(routes.host("a")).toBeUndefined();
    expect(gone).toEqual(["a"]);

    // A restarted host at a new address: what was opened for the old address must go.
    await registry.registerHost(host("b", "10.0.0.3:7000"));
    await settle();
    expect(gone).toEqual(["a", "b"]);
    expect(routes.host("b")?.pushAddress).toBe("10.0.0.3:7000");

    await b.revoke();
    await settle();
    // b's old lease took its routes with it; the new lease's host record stays.
    expect(routes.devicesOf("u")).toEqual([]);
    expect(routes.host("b")).toBeDefined();
    await routes.close();
    await registry.close();
  });
});
