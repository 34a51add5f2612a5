import type { DeviceRoute, EdgeHost, Registry, RegistryEvent } from "../../../../lib/registry/registry.ts";
import type { DeviceRef, EdgeHostRef, ResolvedRoute, RouteDirectory } from "../../domain/ports.ts";

export interface RegistryRouteDirectoryOptions {
  /** A host left the registry or moved to another address: close what was opened for it. */
  readonly onHostGone?: (hostId: string) => void;
}

export interface RegistryRouteDirectory extends RouteDirectory {
  close(): Promise<void>;
}

function toResolved(route: DeviceRoute): ResolvedRoute {
  return {
    device: { userId: route.userId, deviceId: route.deviceId },
    hostId: route.hostId,
    revision: route.revision,
  };
}

function toHostRef(host: EdgeHost): EdgeHostRef {
  return { hostId: host.hostId, pushAddress: host.pushAddress, draining: host.state === "draining" };
}

/**
 * The route directory as a local cache of the registry, kept by a watch (a snapshot, then every
 * change in revision order), so routing a push never waits on etcd. Resolves once the snapshot is
 * in. A route dropped because an edge reported a newer stream comes back with the watch's next
 * put for the device (at that newer revision or later).
 */
export async function createRegistryRouteDirectory(
  registry: Registry,
  options: RegistryRouteDirectoryOptions = {},
): Promise<RegistryRouteDirectory> {
  const hosts = new Map<string, EdgeHostRef>();
  /** user id -> device id -> route. */
  const byUser = new Map<string, Map<string, ResolvedRoute>>();
  /** Highest revision an edge reported per device, above any cached route: puts below it are stale. */
  const floors = new Map<string, bigint>();

  const putRoute = (route: ResolvedRoute) => {
    const key = `${route.device.userId}/${route.device.deviceId}`;
    const floor = floors.get(key);
    if (floor !== undefined) {
      if (route.revision < floor) return;
      floors.delete(key);
    }
    let devices = byUser.get(route.device.userId);
    if (devices === undefined) {
      devices = new Map();
      byUser.set(route.device.userId, devices);
    }
    devices.set(route.device.deviceId, route);
  };

  const removeRoute = (userId: string, deviceId: string) => {
    const devices = byUser.get(userId);
    if (devices === undefined) return;
    devices.delete(deviceId);
    if (devices.size === 0) byUser.delete(userId);
  };

  const apply = (event: RegistryEvent) => {
    switch (event.kind) {
      case "host_put": {
        const previous = hosts.get(event.host.hostId);
        hosts.set(event.host.hostId, toHostRef(event.host));
        if (previous !== undefined && previous.pushAddress !== event.host.pushAddress) {
          options.onHostGone?.(event.host.hostId);
        }
        break;
      }
      case "host_removed":
        hosts.delete(event.hostId);
        options.onHostGone?.(event.hostId);
        break;
      case "route_put":
        putRoute(toResolved(event.route));
        break;
      case "route_removed":
        floors.delete(`${event.userId}/${event.deviceId}`);
        removeRoute(event.userId, event.deviceId);
        break;
    }
  };

  const watch = await registry.watch(apply);

  return {
    route(device: DeviceRef) {
      const route = byUser.get(device.userId)?.get(device.deviceId);
      return route !== undefined && hosts.has(route.hostId) ? route : undefined;
    },
    devicesOf(userId) {
      const devices = byUser.get(userId);
      if (devices === undefined) return [];
      return [...devices.values()].filter((r) => hosts.has(r.hostId));
    },
    host(hostId) {
      return hosts.get(hostId);
    },
    forgetOlderThan(device, revision) {
      const route = byUser.get(device.userId)?.get(device.deviceId);
      if (route === undefined || route.revision >= revision) return;
      removeRoute(device.userId, device.deviceId);
      floors.set(`${device.userId}/${device.deviceId}`, revision);
    },
    close: () => watch.close(),
  };
}
