import type { HostLease } from "../../lib/registry/registry.ts";

/**
 * The lease of an edge that runs without a registry (a lone edge in front of its services, or a
 * test): routes live only in this process, with revisions from a local counter, so fencing and
 * releases behave as with a registry for the streams of this one host.
 */
export function createStandaloneLease(hostId: string): HostLease {
  let revision = 0n;
  const routes = new Map<string, bigint>();
  return {
    hostId,
    // Nothing to lose: the lease is this process.
    lost: new Promise<void>(() => {}),
    async update() {},
    async assignDevice(userId, deviceId) {
      revision += 1n;
      routes.set(`${userId}/${deviceId}`, revision);
      return revision;
    },
    async releaseDevice(userId, deviceId, at) {
      const key = `${userId}/${deviceId}`;
      if (routes.get(key) === at) routes.delete(key);
    },
    async revoke() {
      routes.clear();
    },
  };
}
