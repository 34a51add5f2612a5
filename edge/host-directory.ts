import { createHash } from "node:crypto";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import type { Logger } from "../lib/logging.ts";
import type { EdgeHost, Registry } from "../lib/registry/registry.ts";

/** A host as placement sees it. */
export interface PlacementHost {
  readonly hostId: string;
  readonly publicUrl: string;
  readonly load: number;
}

/**
 * Load at which a host's weight halves. Rendezvous weights only tilt placement, so a host with a
 * few hundred streams more than another still gets most of its own devices back (placement stays
 * stable across reconnects), while a fresh host draws new devices until it catches up.
 */
export const LOAD_SCALE = 1_000;

/**
 * Weighted rendezvous (highest random weight) hashing: each host scores
 * `weight / -ln(u)`, with `u` in (0, 1) a hash of (device, host) and `weight = 1 / (1 + load /
 * LOAD_SCALE)`, and the highest score wins. A device keeps its host while that host lives (only
 * the devices of a host that leaves move), and hosts draw devices in proportion to their weight.
 */
export function rendezvousHost<H extends PlacementHost>(
  device: DeviceAddress,
  hosts: readonly H[],
): H | undefined {
  let best: H | undefined;
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const host of hosts) {
    const digest = createHash("sha256")
      .update(`${device.userId}/${device.deviceId}\u0000${host.hostId}`)
      .digest();
    // 53 random bits -> u strictly inside (0, 1).
    const bits = digest.readUIntBE(0, 6) * 32 + ((digest[6] ?? 0) >>> 3);
    const u = (bits + 0.5) / 2 ** 53;
    const weight = 1 / (1 + Math.max(0, host.load) / LOAD_SCALE);
    const score = weight / -Math.log(u);
    if (score > bestScore || (score === bestScore && best !== undefined && host.hostId < best.hostId)) {
      best = host;
      bestScore = score;
    }
  }
  return best;
}

export interface HostDirectory {
  /** Where the device should open its stream: a serving host, this one when it is the only one. */
  locate(device: DeviceAddress): Promise<PlacementHost>;
  /** Another serving host for the device (draining), or undefined when there is none. */
  elsewhere(device: DeviceAddress): Promise<PlacementHost | undefined>;
  /** The serving hosts other than this one, as last read (for synchronous use during a drain). */
  otherHostsNow(): readonly PlacementHost[];
  /** Reads the registry's hosts again now. */
  refresh(): Promise<void>;
}

export interface HostDirectoryOptions {
  readonly registry: Registry | undefined;
  readonly self: () => PlacementHost & { readonly state: "serving" | "draining" };
  /** How long a read of the registry's hosts is reused. */
  readonly cacheMs?: number;
  readonly logger: Logger;
}

/** Serving hosts from the registry (read at most every `cacheMs`), for Locate and Drain. */
export function createHostDirectory(options: HostDirectoryOptions): HostDirectory {
  const cacheMs = options.cacheMs ?? 1_000;
  let hosts: readonly EdgeHost[] = [];
  let readAt = Number.NEGATIVE_INFINITY;
  let reading: Promise<void> | undefined;

  const read = (): Promise<void> => {
    if (options.registry === undefined) return Promise.resolve();
    const registry = options.registry;
    reading ??= registry
      .hosts()
      .then(
        (list) => {
          hosts = list;
          readAt = Date.now();
        },
        (err: unknown) => {
          // Keep the last list: Locate still answers (possibly with a host that just left).
          options.logger.warn({ err }, "could not read the edge hosts from the registry");
        },
      )
      .finally(() => {
        reading = undefined;
      });
    return reading;
  };
  const fresh = async () => {
    if (Date.now() - readAt > cacheMs) await read();
  };
  const others = (): PlacementHost[] => {
    const selfId = options.self().hostId;
    return hosts.filter((h) => h.state === "serving" && h.hostId !== selfId);
  };
  /** Serving hosts, this one included unless it drains (as the registry has it, for the same
   * answer on every host, or as it knows itself before its record is read). */
  const serving = (): PlacementHost[] => {
    const self = options.self();
    const list = others();
    if (self.state === "serving") list.push(hosts.find((h) => h.hostId === self.hostId) ?? self);
    return list;
  };

  return {
    async locate(device) {
      await fresh();
      return rendezvousHost(device, serving()) ?? options.self();
    },
    async elsewhere(device) {
      await fresh();
      return rendezvousHost(device, others());
    },
    otherHostsNow: others,
    refresh: read,
  };
}
