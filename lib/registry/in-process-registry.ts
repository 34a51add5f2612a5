import { failedPrecondition } from "../errors.ts";
import type { Logger } from "../logging.ts";
import { createLogger } from "../logging.ts";
import type { DeviceRoute, EdgeHost, EdgeHostState, HostLease, Registry, RegistryEvent } from "./registry.ts";

/**
 * The registry port in process memory: the embedded profile's stand-in for etcd, where the edge
 * and delivery share one process. It keeps etcd's model so the code above it behaves the same on
 * both:
 *
 * - One global revision, increased by every write (etcd's store revision). A route's revision is
 *   the revision of the write that last assigned it (its mod_revision): the fencing token.
 * - Every key belongs to a lease. Revoking or expiring a lease deletes every key still attached to
 *   it in one write (one revision), as etcd does. A route re-assigned to another host moves to
 *   that host's lease, so the first host's lease no longer takes it down.
 * - A lease lives while it is renewed. Here the renewing process is this very process, so a lease
 *   counts as renewed while its keep-alive runs (every sweep renews it; a stalled event loop stalls
 *   the sweep too, so it never expires a live host). A lease whose keep-alive is suspended
 *   (`suspendKeepAlive()`: a crashed, hung or partitioned host) expires `ttlMs` after its last
 *   renewal, taking its host and routes with it, and `lost` resolves.
 * - Watches get a snapshot (hosts, then routes, as puts) synchronously inside `watch()`, then every
 *   change in revision order. Events are handed to each watcher from a queue on a microtask, never
 *   inside the write, so a slow or throwing handler cannot break a writer.
 *
 * Writes on an expired or revoked lease fail with FAILED_PRECONDITION `LEASE_NOT_FOUND` (etcd's
 * "requested lease not found"); releasing a route on such a lease is a no-op (it is gone already).
 */
export interface InProcessRegistryOptions {
  /** The clock for lease expiry and `connectedAt`/`startedAt` (tests). Default Date.now. */
  readonly now?: () => number;
  /** How often leases are renewed and expired ones removed. Default 250 ms. */
  readonly sweepIntervalMs?: number;
  /** TTL of leases registered without one. Default 5 s ("a few seconds", as for etcd). */
  readonly defaultTtlMs?: number;
  /** Where failing watch handlers are logged. Default: a JSON logger at warn. */
  readonly logger?: Logger;
}

/** A lease of the in-process registry: the port's lease plus fault injection for tests. */
export interface InProcessHostLease extends HostLease {
  /**
   * Stops renewing the lease without revoking it, as a host that crashed, hung or lost etcd would:
   * it expires `ttlMs` after its last renewal unless `resumeKeepAlive()` comes first.
   */
  suspendKeepAlive(): void;
  /** Renews the lease now and keeps renewing it (no effect once it expired or was revoked). */
  resumeKeepAlive(): void;
}

export interface InProcessRegistry extends Registry {
  registerHost(
    host: Omit<EdgeHost, "startedAt">,
    options?: { readonly ttlMs?: number },
  ): Promise<InProcessHostLease>;
  /** Renews live leases and expires lapsed ones now (it also runs every `sweepIntervalMs`). */
  sweep(): void;
  /** The current revision (0 before the first write). */
  readonly revision: bigint;
}

interface LeaseState {
  readonly id: number;
  readonly hostId: string;
  readonly ttlMs: number;
  expiresAt: number;
  keepAlive: boolean;
  ended: false | "revoked" | "expired";
  resolveLost: () => void;
}

interface HostEntry {
  host: EdgeHost;
  readonly leaseId: number;
}

interface RouteEntry {
  readonly route: DeviceRoute;
  readonly leaseId: number;
}

interface Watcher {
  readonly handler: (event: RegistryEvent) => void;
  readonly queue: RegistryEvent[];
  scheduled: boolean;
  closed: boolean;
}

function routeKey(userId: string, deviceId: string): string {
  // '/' never occurs in a user or device id (registry.proto), so the key is unambiguous.
  return `${userId}/${deviceId}`;
}

export function createInProcessRegistry(options: InProcessRegistryOptions = {}): InProcessRegistry {
  const now = options.now ?? Date.now;
  const defaultTtlMs = options.defaultTtlMs ?? 5_000;
  const logger = options.logger ?? createLogger("registry", "warn");

  let revision = 0n;
  let nextLeaseId = 1;
  let closed = false;
  const leases = new Map<number, LeaseState>();
  const hosts = new Map<string, HostEntry>();
  const routes = new Map<string, RouteEntry>();
  const watchers = new Set<Watcher>();

  const emit = (events: readonly RegistryEvent[]) => {
    for (const watcher of watchers) {
      watcher.queue.push(...events);
      if (!watcher.scheduled) {
        watcher.scheduled = true;
        queueMicrotask(() => drain(watcher));
      }
    }
  };

  const deliver = (watcher: Watcher, event: RegistryEvent) => {
    try {
      watcher.handler(event);
    } catch (err) {
      logger.warn({ err, event: event.kind }, "registry watch handler failed; event skipped");
    }
  };

  const drain = (watcher: Watcher) => {
    watcher.scheduled = false;
    while (!watcher.closed && watcher.queue.length > 0) {
      const event = watcher.queue.shift() as RegistryEvent;
      deliver(watcher, event);
    }
  };

  const checkOpen = () => {
    if (closed) throw new Error("the registry is closed");
  };

  const liveLease = (id: number): LeaseState => {
    checkOpen();
    const lease = leases.get(id);
    if (lease === undefined || lease.ended !== false) {
      throw failedPrecondition("LEASE_NOT_FOUND", "the host's lease expired or was revoked; register again");
    }
    return lease;
  };

  /** Deletes every key attached to the lease in one write (one revision), as etcd does. */
  const endLease = (lease: LeaseState, how: "revoked" | "expired") => {
    if (lease.ended !== false) return;
    lease.ended = how;
    leases.delete(lease.id);
    const removedRoutes: RouteEntry[] = [];
    for (const [key, entry] of routes) {
      if (entry.leaseId === lease.id) {
        routes.delete(key);
        removedRoutes.push(entry);
      }
    }
    const hostEntry = hosts.get(lease.hostId);
    const ownsHost = hostEntry !== undefined && hostEntry.leaseId === lease.id;
    if (ownsHost) hosts.delete(lease.hostId);
    if (removedRoutes.length > 0 || ownsHost) {
      revision += 1n;
      const at = revision;
      // Routes first: a cache that sees the host go never holds a route to a host it forgot.
      emit([
        ...removedRoutes.map(
          (entry): RegistryEvent => ({
            kind: "route_removed",
            userId: entry.route.userId,
            deviceId: entry.route.deviceId,
            revision: at,
          }),
        ),
        ...(ownsHost ? [{ kind: "host_removed", hostId: lease.hostId } as const] : []),
      ]);
    }
    if (how === "expired") lease.resolveLost();
  };

  const sweep = () => {
    if (closed) return;
    const t = now();
    for (const lease of [...leases.values()]) {
      if (lease.keepAlive) {
        lease.expiresAt = t + lease.ttlMs;
      } else if (lease.expiresAt <= t) {
        endLease(lease, "expired");
      }
    }
  };

  const sweepIntervalMs = options.sweepIntervalMs ?? 250;
  const timer = setInterval(sweep, sweepIntervalMs);
  timer.unref();

  const registry: InProcessRegistry = {
    get revision() {
      return revision;
    },

    sweep,

    async registerHost(host, registerOptions) {
      checkOpen();
      const ttlMs = registerOptions?.ttlMs ?? defaultTtlMs;
      if (!(ttlMs > 0)) throw new Error(`lease TTL must be positive, got ${ttlMs}`);
      let resolveLost = () => {};
      const lost = new Promise<void>((resolve) => {
        resolveLost = resolve;
      });
      const lease: LeaseState = {
        id: nextLeaseId++,
        hostId: host.hostId,
        ttlMs,
        expiresAt: now() + ttlMs,
        keepAlive: true,
        ended: false,
        resolveLost,
      };
      leases.set(lease.id, lease);
      const record: EdgeHost = {
        hostId: host.hostId,
        pushAddress: host.pushAddress,
        publicUrl: host.publicUrl,
        state: host.state,
        load: host.load,
        startedAt: new Date(now()),
      };
      // A host id still live under an older lease (a restarted pod) is taken over, as an etcd put
      // would: the key moves to the new lease, the old lease keeps only its routes until it ends.
      hosts.set(host.hostId, { host: record, leaseId: lease.id });
      revision += 1n;
      emit([{ kind: "host_put", host: record }]);

      const renew = () => {
        lease.expiresAt = now() + lease.ttlMs;
      };
      const handle: InProcessHostLease = {
        hostId: host.hostId,
        lost,
        async update(changes: { readonly state?: EdgeHostState; readonly load?: number }) {
          const live = liveLease(lease.id);
          renew();
          const entry = hosts.get(live.hostId);
          if (entry === undefined || entry.leaseId !== live.id) {
            throw failedPrecondition(
              "HOST_SUPERSEDED",
              "another registration of this host id took over its record; register again",
            );
          }
          entry.host = {
            ...entry.host,
            ...(changes.state === undefined ? {} : { state: changes.state }),
            ...(changes.load === undefined ? {} : { load: changes.load }),
          };
          revision += 1n;
          emit([{ kind: "host_put", host: entry.host }]);
        },
        async assignDevice(userId, deviceId) {
          const live = liveLease(lease.id);
          revision += 1n;
          const route: DeviceRoute = {
            userId,
            deviceId,
            hostId: live.hostId,
            revision,
            connectedAt: new Date(now()),
          };
          routes.set(routeKey(userId, deviceId), { route, leaseId: live.id });
          emit([{ kind: "route_put", route }]);
          return revision;
        },
        async releaseDevice(userId, deviceId, routeRevision) {
          checkOpen();
          const key = routeKey(userId, deviceId);
          const entry = routes.get(key);
          // Compare-and-delete on the mod revision: a newer stream (here or elsewhere) wins.
          if (entry === undefined || entry.leaseId !== lease.id || entry.route.revision !== routeRevision) {
            return;
          }
          routes.delete(key);
          revision += 1n;
          emit([{ kind: "route_removed", userId, deviceId, revision }]);
        },
        async revoke() {
          if (closed) return;
          endLease(lease, "revoked");
        },
        suspendKeepAlive() {
          lease.keepAlive = false;
        },
        resumeKeepAlive() {
          if (lease.ended !== false) return;
          lease.keepAlive = true;
          renew();
        },
      };
      return handle;
    },

    async hosts() {
      checkOpen();
      return [...hosts.values()].map((entry) => entry.host);
    },

    async route(userId, deviceId) {
      checkOpen();
      return routes.get(routeKey(userId, deviceId))?.route;
    },

    async watch(handler) {
      checkOpen();
      const watcher: Watcher = { handler, queue: [], scheduled: false, closed: false };
      // The snapshot is taken and handed over before any later write can interleave (all of this
      // runs synchronously), so snapshot plus live events is exactly the registry's history.
      for (const entry of hosts.values()) deliver(watcher, { kind: "host_put", host: entry.host });
      const current = [...routes.values()].sort((a, b) =>
        a.route.revision < b.route.revision ? -1 : a.route.revision > b.route.revision ? 1 : 0,
      );
      for (const entry of current) deliver(watcher, { kind: "route_put", route: entry.route });
      watchers.add(watcher);
      return {
        async close() {
          watcher.closed = true;
          watcher.queue.length = 0;
          watchers.delete(watcher);
        },
      };
    },

    async close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      for (const watcher of watchers) {
        watcher.closed = true;
        watcher.queue.length = 0;
      }
      watchers.clear();
    },
  };
  return registry;
}
