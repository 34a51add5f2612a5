import { describe, expect, it } from "vitest";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import { rendezvousHost } from "./host-directory.ts";

const devices = Array.from(
  { length: 2_000 },
  (_, i) => ({ userId: `u${i}`, deviceId: "phone" }) as DeviceAddress,
);
const host = (hostId: string, load = 0) => ({ hostId, publicUrl: `http://${hostId}`, load });

describe("rendezvous placement", () => {
  it("is stable: only the devices of a host that leaves move", () => {
    const three = [host("a"), host("b"), host("c")];
    const before = devices.map((d) => rendezvousHost(d, three)?.hostId);
    const after = devices.map((d) => rendezvousHost(d, [host("a"), host("b")])?.hostId);
    devices.forEach((_, i) => {
      if (before[i] !== "c") expect(after[i]).toBe(before[i]);
    });
    // Roughly even without load.
    for (const id of ["a", "b", "c"]) {
      const share = before.filter((h) => h === id).length / devices.length;
      expect(share).toBeGreaterThan(0.25);
      expect(share).toBeLessThan(0.42);
    }
  });

  it("sends fewer devices to a loaded host", () => {
    const hosts = [host("busy", 3_000), host("idle", 0)];
    const busy = devices.filter((d) => rendezvousHost(d, hosts)?.hostId === "busy").length / devices.length;
    // weight 1/4 against 1: about a fifth.
    expect(busy).toBeGreaterThan(0.1);
    expect(busy).toBeLessThan(0.3);
    expect(rendezvousHost(devices[0] as DeviceAddress, [])).toBeUndefined();
  });
});
