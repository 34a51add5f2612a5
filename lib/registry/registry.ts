/**
 * The registry port: which edge hosts are alive and which host holds each device's stream. etcd
 * in the cluster (hosts under a lease with keepalive, device routes under the host's lease, mod
 * revisions as fencing tokens); an in-process registry in the embedded profile. Edges write it,
 * delivery reads it through a watch-backed cache.
 */

export type EdgeHostState = "serving" | "draining";

export interface EdgeHost {
  readonly hostId: string;
  /** host:port of the host's internal EdgePushService (gRPC). */
  readonly pushAddress: string;
  /** Base URL clients connect to (Locate, Drain). */
  readonly publicUrl: string;
  readonly state: EdgeHostState;
  /** Streams the host holds, for load-weighted placement. */
  readonly load: number;
  readonly startedAt: Date;
}

export interface DeviceRoute {
  readonly userId: string;
  readonly deviceId: string;
  readonly hostId: string;
  /**
   * Increases with every assignment of any device (etcd's mod revision): a push carrying an older
   * revision than the stream the edge holds is stale, and a release with an older revision than
   * the current route must not remove it.
   */
  readonly revision: bigint;
  readonly connectedAt: Date;
}

export type RegistryEvent =
  | { readonly kind: "host_put"; readonly host: EdgeHost }
  | { readonly kind: "host_removed"; readonly hostId: string }
  | { readonly kind: "route_put"; readonly route: DeviceRoute }
  | {
      readonly kind: "route_removed";
      readonly userId: string;
      readonly deviceId: string;
      readonly revision: bigint;
    };

/** A live registration of one edge host; its device routes live and die with it. */
export interface HostLease {
  readonly hostId: string;
  /** Updates state and load (keeps the lease alive too). */
  update(changes: { readonly state?: EdgeHostState; readonly load?: number }): Promise<void>;
  /** Routes `device` to this host, replacing any route to another host; returns the new revision. */
  assignDevice(userId: string, deviceId: string): Promise<bigint>;
  /** Removes the route only if it is still this host's at `revision` (a newer stream elsewhere wins). */
  releaseDevice(userId: string, deviceId: string, revision: bigint): Promise<void>;
  /** Ends the lease: the host and every route under it disappear at once. */
  revoke(): Promise<void>;
  /**
   * Resolves when the lease ended without `revoke()`: it expired because renewals stopped for
   * longer than its TTL (a stalled process, a partition from etcd). The host and its routes are
   * gone by then, and further `assignDevice` or `update` calls fail: the host must close its
   * streams (their devices reconnect and re-register) and register again under a new lease.
   * Never resolves for a lease that was revoked.
   */
  readonly lost: Promise<void>;
}

export interface Registry {
  /**
   * Registers a host under a lease of `ttlMs`, kept alive while the process lives; if the process
   * stops renewing it (crash, partition), the host and its routes expire. An adapter may round the
   * TTL up to what its engine grants (etcd: whole seconds, and at least its minimum TTL).
   */
  registerHost(host: Omit<EdgeHost, "startedAt">, options?: { readonly ttlMs?: number }): Promise<HostLease>;
  hosts(): Promise<readonly EdgeHost[]>;
  route(userId: string, deviceId: string): Promise<DeviceRoute | undefined>;
  /**
   * Every current host and route as `put` events first, then changes as they happen, in revision
   * order: enough to keep a complete local cache.
   */
  watch(handler: (event: RegistryEvent) => void): Promise<{ close(): Promise<void> }>;
  close(): Promise<void>;
}
