import type {
  IDuplexStream,
  IKeyValue,
  ILeaseKeepAliveRequest,
  ILeaseKeepAliveResponse,
  IWatchRequest,
  IWatchResponse,
} from "etcd3";
import { Etcd3, EtcdLeaseInvalidError } from "etcd3";
import { failedPrecondition } from "../../errors.ts";
import type { Logger } from "../../logging.ts";
import { createLogger } from "../../logging.ts";
import type {
  DeviceRoute,
  EdgeHost,
  EdgeHostState,
  HostLease,
  Registry,
  RegistryEvent,
} from "../registry.ts";

export interface EtcdRegistryOptions {
  /** etcd client URLs (`http://host:2379`), used when no `client` is given. */
  readonly endpoints?: readonly string[];
  /** A client to share; the registry never closes it. Default: its own, closed by `close()`. */
  readonly client?: Etcd3;
  /** Every key of the registry lives under it, e.g. `parley/registry/`. */
  readonly keyPrefix: string;
  /** TTL of leases registered without one. Default 10 s. */
  readonly defaultTtlMs?: number;
  /** Deadline of each unary call (the client retries transient failures up to 3 times). Default 3 s. */
  readonly callTimeoutMs?: number;
  /** Where lease losses, watch reconnections and failing watch handlers are logged. */
  readonly logger?: Logger;
  /** Keys per Range page of a snapshot or host listing. Default 1,000 (well under gRPC's 4 MB). */
  readonly pageSize?: number;
}

/** A lease of the etcd registry: the port's lease plus fault injection for tests. */
export interface EtcdHostLease extends HostLease {
  /** The TTL etcd granted: the one asked for, rounded up to whole seconds and to etcd's minimum. */
  readonly ttlMs: number;
  /**
   * Stops renewing the lease without revoking it, as a host that hung or lost etcd would: etcd
   * expires it a TTL after the last renewal, and `lost` resolves once etcd says it is gone.
   */
  suspendKeepAlive(): void;
}

export interface EtcdRegistry extends Registry {
  registerHost(
    host: Omit<EdgeHost, "startedAt">,
    options?: { readonly ttlMs?: number },
  ): Promise<EtcdHostLease>;
}

interface StoredHost {
  readonly pushAddress: string;
  readonly publicUrl: string;
  readonly state: EdgeHostState;
  readonly load: number;
  readonly startedAtMs: number;
}

interface StoredRoute {
  readonly hostId: string;
  readonly connectedAtMs: number;
}

type Stream<Req, Res> = IDuplexStream<Req, Res>;

const MAX_BACKOFF_MS = 2_000;

const leaseNotFound = () =>
  failedPrecondition("LEASE_NOT_FOUND", "the host's lease expired or was revoked; register again");

/**
 * The registry port on etcd (v3 API, 3.4+). Keys under `keyPrefix`:
 *
 * - `hosts/<host id>` -> the host as JSON, attached to the host's lease;
 * - `routes/<user id>/<device id>` -> `{hostId, connectedAtMs}`, attached to the lease of the host
 *   that assigned it last, so a host's routes vanish with its lease, in the same revision, while
 *   routes that moved to another host stay. A route's mod revision is its fencing revision.
 *
 * Leases: granted with the TTL in whole seconds (rounded up; etcd may raise it to its minimum, the
 * granted TTL is the one used), renewed over a keep-alive stream every third of the TTL. A lease
 * counts as lost when etcd answers that it does not know it (a renewal answered TTL 0, a write
 * refused, or the TTL check a renewal gap triggers) or when no renewal succeeded for a whole TTL and
 * etcd cannot be asked (by then etcd has expired it, or is about to). `lost` then resolves.
 *
 * Reads are linearizable (etcd's default). `watch` is a snapshot at revision R (paged at that
 * revision), then a watch from R+1: no gap and no repeat, resumed from the last revision seen after
 * a broken stream, and re-snapshotted (with the differences emitted as events) if that revision
 * was compacted meanwhile.
 *
 * Calls per operation: registerHost 2 (LeaseGrant, Put) plus the keep-alive stream;
 * assignDevice 1 (Put); releaseDevice 1 (Txn: compare mod revision and lease, delete); update 1
 * (Txn: compare lease, put); revoke 1 (LeaseRevoke); hosts 1 per 1,000 hosts; route 1 (Range);
 * watch 1 per 1,000 keys, then the stream.
 */
export function createEtcdRegistry(options: EtcdRegistryOptions): EtcdRegistry {
  const logger = options.logger ?? createLogger("registry", "warn");
  const callTimeoutMs = options.callTimeoutMs ?? 3_000;
  const ownsClient = options.client === undefined;
  const client =
    options.client ??
    new Etcd3({
      hosts: [...(options.endpoints ?? ["http://127.0.0.1:2379"])],
      dialTimeout: callTimeoutMs,
      // Streams (watch, keep-alive) are long-lived; only unary calls get a deadline.
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      // Pings find a dead connection under an idle watch; etcd allows one every 5 s at most.
      grpcOptions: { "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000 },
    });
  const defaultTtlMs = options.defaultTtlMs ?? 10_000;
  const pageSize = options.pageSize ?? 1_000;
  const prefix = options.keyPrefix;
  const hostsPrefix = `${prefix}hosts/`;
  const routesPrefix = `${prefix}routes/`;
  const hostKey = (hostId: string) => Buffer.from(hostsPrefix + hostId);
  const routeKey = (userId: string, deviceId: string) => Buffer.from(`${routesPrefix}${userId}/${deviceId}`);

  let closed = false;
  const leases = new Set<LeaseRuntime>();
  const watches = new Set<{ close(): Promise<void> }>();

  const checkOpen = () => {
    if (closed) throw new Error("the registry is closed");
  };

  /** Every key in [start, end) at one revision, a page at a time. */
  const rangeAll = async (start: string): Promise<{ kvs: IKeyValue[]; revision: bigint }> => {
    const end = prefixEnd(Buffer.from(start));
    for (let attempt = 0; ; attempt++) {
      const kvs: IKeyValue[] = [];
      let revision: string | undefined;
      let from = Buffer.from(start);
      try {
        for (;;) {
          const page = await client.kv.range({
            key: from,
            range_end: end,
            limit: pageSize,
            ...(revision === undefined ? {} : { revision }),
          });
          revision ??= page.header.revision;
          kvs.push(...page.kvs);
          const last = page.kvs.at(-1);
          if (!page.more || last === undefined) break;
          from = Buffer.concat([last.key, Buffer.from([0])]);
        }
        return { kvs, revision: BigInt(revision ?? "0") };
      } catch (err) {
        // A compaction between two pages: start again at the current revision.
        if (attempt < 3 && err instanceof Error && err.message.includes("compacted")) continue;
        throw err;
      }
    }
  };

  const decodeHost = (kv: IKeyValue): EdgeHost => {
    const stored = JSON.parse(kv.value.toString()) as StoredHost;
    return {
      hostId: kv.key.toString().slice(hostsPrefix.length),
      pushAddress: stored.pushAddress,
      publicUrl: stored.publicUrl,
      state: stored.state,
      load: stored.load,
      startedAt: new Date(stored.startedAtMs),
    };
  };

  /** A route key's user and device, or undefined for a key that is not one. */
  const routeIds = (key: string): { userId: string; deviceId: string } | undefined => {
    const rest = key.slice(routesPrefix.length);
    const slash = rest.indexOf("/");
    if (!key.startsWith(routesPrefix) || slash <= 0 || slash === rest.length - 1) return undefined;
    return { userId: rest.slice(0, slash), deviceId: rest.slice(slash + 1) };
  };

  const decodeRoute = (kv: IKeyValue): DeviceRoute | undefined => {
    const ids = routeIds(kv.key.toString());
    if (ids === undefined) return undefined;
    const stored = JSON.parse(kv.value.toString()) as StoredRoute;
    return {
      ...ids,
      hostId: stored.hostId,
      revision: BigInt(kv.mod_revision),
      connectedAt: new Date(stored.connectedAtMs),
    };
  };

  const encodeHost = (host: EdgeHost): Buffer =>
    Buffer.from(
      JSON.stringify({
        pushAddress: host.pushAddress,
        publicUrl: host.publicUrl,
        state: host.state,
        load: host.load,
        startedAtMs: host.startedAt.getTime(),
      } satisfies StoredHost),
    );

  interface LeaseRuntime {
    readonly id: string;
    readonly hostId: string;
    readonly ttlMs: number;
    state: "live" | "revoked" | "lost";
    suspended: boolean;
    /** The host record as last written, which `update` changes. */
    host: EdgeHost;
    /** Stops renewing (revoke, close, loss). */
    stop(): void;
    markLost(why: string): void;
    suspend(): void;
  }

  /**
   * A granted lease, kept alive: a renewal every third of the TTL over a keep-alive stream
   * (reopened when it breaks or stops answering), and a watchdog at the end of the TTL since the
   * last renewal etcd acknowledged, which asks etcd whether the lease still exists before
   * declaring it lost.
   */
  const startLease = (
    granted: { readonly id: string; readonly ttlMs: number; readonly host: EdgeHost },
    grantAskedAt: number,
    resolveLost: () => void,
  ): LeaseRuntime => {
    const lease: LeaseRuntime = {
      id: granted.id,
      hostId: granted.host.hostId,
      ttlMs: granted.ttlMs,
      state: "live",
      suspended: false,
      host: granted.host,
      stop: () => {
        clearInterval(ticker);
        clearTimeout(watchdog);
        dropStream();
      },
      markLost: (why) => {
        if (lease.state !== "live") return;
        lease.state = "lost";
        lease.stop();
        leases.delete(lease);
        logger.warn({ host_id: lease.hostId, lease_id: lease.id }, `registry lease lost: ${why}`);
        resolveLost();
      },
      suspend: () => {
        lease.suspended = true;
        dropStream();
      },
    };
    const tickMs = Math.max(100, Math.floor(lease.ttlMs / 3));
    let stream: Stream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse> | undefined;
    let opening = false;
    /** Send times of renewals not answered yet (a stream answers in order). */
    let pending: number[] = [];
    // etcd started the lease's TTL no earlier than it was asked for.
    let lastRenewedAt = grantAskedAt;
    let watchdog: NodeJS.Timeout | undefined;

    const dropStream = () => {
      const current = stream;
      stream = undefined;
      pending = [];
      if (current !== undefined) closeStream(current);
    };

    const armWatchdog = (at: number) => {
      clearTimeout(watchdog);
      watchdog = setTimeout(verify, Math.max(0, at - Date.now()));
      watchdog.unref();
    };

    const renew = () => {
      if (lease.state !== "live" || lease.suspended) return;
      if (stream === undefined) {
        open();
        return;
      }
      const oldest = pending[0];
      if (oldest !== undefined && Date.now() - oldest > tickMs) {
        // Renewals go unanswered: the stream is stuck; a new one may get through.
        dropStream();
        open();
        return;
      }
      pending.push(Date.now());
      stream.write({ ID: lease.id });
    };

    const open = () => {
      if (opening) return;
      opening = true;
      client.leaseClient
        .leaseKeepAlive()
        .then((opened) => {
          if (lease.state !== "live" || lease.suspended) {
            closeStream(opened);
            return;
          }
          stream = opened;
          pending = [];
          const gone = () => {
            if (stream === opened) {
              stream = undefined;
              pending = [];
            }
          };
          opened
            .on("data", (response) => {
              if (stream !== opened) return;
              const sentAt = pending.shift() ?? Date.now();
              if (Number(response.TTL) <= 0) {
                lease.markLost("etcd no longer knows the lease");
                return;
              }
              // etcd renewed it no earlier than we asked, so it lives at least a TTL from then.
              lastRenewedAt = Math.max(lastRenewedAt, sentAt);
              armWatchdog(lastRenewedAt + lease.ttlMs);
            })
            .on("error", gone)
            .on("end", gone);
          renew();
        })
        .catch((err: unknown) =>
          logger.debug({ err, host_id: lease.hostId }, "lease keep-alive stream failed"),
        )
        .finally(() => {
          opening = false;
        });
    };

    /** The TTL passed without an acknowledged renewal: ask etcd whether the lease still exists. */
    const verify = () => {
      if (lease.state !== "live") return;
      client.leaseClient
        .leaseTimeToLive({ ID: lease.id }, { deadline: Date.now() + Math.min(callTimeoutMs, 1_000) })
        .then((answer) => {
          if (lease.state !== "live") return;
          const remaining = Number(answer.TTL);
          if (remaining < 0) {
            lease.markLost("the lease expired: renewals stopped for longer than its TTL");
            return;
          }
          // Alive (etcd rounds the remaining time down), so renewals are not getting through.
          if (!lease.suspended) dropStream();
          armWatchdog(Date.now() + Math.max(remaining * 1_000, 100));
        })
        .catch((err: unknown) => {
          if (lease.state !== "live") return;
          if (err instanceof EtcdLeaseInvalidError) {
            lease.markLost("the lease expired: renewals stopped for longer than its TTL");
            return;
          }
          // Unrenewed for a whole TTL and etcd out of reach: etcd has expired the lease, or will
          // before any renewal could get through.
          logger.debug({ err, host_id: lease.hostId }, "lease check failed");
          lease.markLost("no renewal for a whole TTL and etcd cannot be reached");
        });
    };

    const ticker = setInterval(renew, tickMs);
    ticker.unref();
    armWatchdog(lastRenewedAt + lease.ttlMs);
    leases.add(lease);
    open();
    return lease;
  };

  /** Runs a write under the lease; etcd's "lease not found" means the lease ended. */
  const underLease = async <T>(lease: LeaseRuntime, write: () => Promise<T>): Promise<T> => {
    checkOpen();
    if (lease.state !== "live") throw leaseNotFound();
    try {
      return await write();
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError) {
        lease.markLost("etcd refused a write: lease not found");
        throw leaseNotFound();
      }
      throw err;
    }
  };

  const registry: EtcdRegistry = {
    async registerHost(host, registerOptions) {
      checkOpen();
      const askedMs = registerOptions?.ttlMs ?? defaultTtlMs;
      if (!(askedMs > 0)) throw new Error(`lease TTL must be positive, got ${askedMs}`);
      const grantAskedAt = Date.now();
      const granted = await client.leaseClient.leaseGrant({ TTL: Math.ceil(askedMs / 1_000) });
      const record: EdgeHost = {
        hostId: host.hostId,
        pushAddress: host.pushAddress,
        publicUrl: host.publicUrl,
        state: host.state,
        load: host.load,
        startedAt: new Date(),
      };
      try {
        // A host id still held by an older lease (a restarted pod) moves to this one.
        await client.kv.put({ key: hostKey(host.hostId), value: encodeHost(record), lease: granted.ID });
      } catch (err) {
        await client.leaseClient.leaseRevoke({ ID: granted.ID }).catch(() => undefined);
        throw err;
      }

      let resolveLost = () => {};
      const lost = new Promise<void>((resolve) => {
        resolveLost = resolve;
      });
      const lease = startLease(
        { id: granted.ID, ttlMs: Number(granted.TTL) * 1_000, host: record },
        grantAskedAt,
        resolveLost,
      );

      const handle: EtcdHostLease = {
        hostId: host.hostId,
        ttlMs: lease.ttlMs,
        lost,
        update: (changes) =>
          underLease(lease, async () => {
            const next: EdgeHost = {
              ...lease.host,
              ...(changes.state === undefined ? {} : { state: changes.state }),
              ...(changes.load === undefined ? {} : { load: changes.load }),
            };
            const key = hostKey(host.hostId);
            const answer = await client.kv.txn({
              compare: [{ key, target: "Lease", result: "Equal", lease: lease.id }],
              success: [{ request_put: { key, value: encodeHost(next), lease: lease.id } }],
              failure: [{ request_range: { key } }],
            });
            if (!answer.succeeded) {
              const current = answer.responses[0]?.response_range.kvs[0];
              if (current === undefined) throw leaseNotFound();
              throw failedPrecondition(
                "HOST_SUPERSEDED",
                "another registration of this host id took over its record; register again",
              );
            }
            lease.host = next;
          }),
        assignDevice: (userId, deviceId) =>
          underLease(lease, async () => {
            const value: StoredRoute = { hostId: host.hostId, connectedAtMs: Date.now() };
            const answer = await client.kv.put({
              key: routeKey(userId, deviceId),
              value: Buffer.from(JSON.stringify(value)),
              lease: lease.id,
            });
            return BigInt(answer.header.revision);
          }),
        async releaseDevice(userId, deviceId, revision) {
          checkOpen();
          // A lease that ended took its routes with it.
          if (lease.state !== "live") return;
          const key = routeKey(userId, deviceId);
          await client.kv.txn({
            compare: [
              { key, target: "Mod", result: "Equal", mod_revision: revision.toString() },
              { key, target: "Lease", result: "Equal", lease: lease.id },
            ],
            success: [{ request_delete_range: { key } }],
            failure: [],
          });
        },
        async revoke() {
          if (lease.state !== "live") return;
          lease.state = "revoked";
          lease.stop();
          leases.delete(lease);
          try {
            await client.leaseClient.leaseRevoke({ ID: lease.id });
          } catch (err) {
            if (!(err instanceof EtcdLeaseInvalidError)) throw err;
          }
        },
        suspendKeepAlive: () => lease.suspend(),
      };
      return handle;
    },

    async hosts() {
      checkOpen();
      const { kvs } = await rangeAll(hostsPrefix);
      return kvs.map(decodeHost);
    },

    async route(userId, deviceId) {
      checkOpen();
      const answer = await client.kv.range({ key: routeKey(userId, deviceId) });
      const kv = answer.kvs[0];
      return kv === undefined ? undefined : decodeRoute(kv);
    },

    async watch(handler) {
      checkOpen();
      const handle = await startWatch(handler);
      watches.add(handle);
      return {
        async close() {
          watches.delete(handle);
          await handle.close();
        },
      };
    },

    async close() {
      if (closed) return;
      for (const watch of [...watches]) await watch.close();
      watches.clear();
      // Only the leases this registry granted and still holds: the process is leaving, so its
      // hosts and routes go at once rather than a TTL later.
      for (const lease of [...leases]) {
        lease.state = "revoked";
        lease.stop();
        await client.leaseClient.leaseRevoke({ ID: lease.id }).catch((err: unknown) => {
          logger.warn({ err, host_id: lease.hostId }, "could not revoke the lease; it expires by its TTL");
        });
      }
      leases.clear();
      closed = true;
      if (ownsClient) client.close();
    },
  };

  /**
   * One watch: the snapshot, then the stream of changes. Keeps the mod revision of every key it
   * reported present, so a re-snapshot after a compaction can report exactly what changed.
   */
  const startWatch = async (handler: (event: RegistryEvent) => void) => {
    const present = new Map<string, bigint>();
    let lastRevision = 0n;
    let stopped = false;
    let stream: Stream<IWatchRequest, IWatchResponse> | undefined;
    let retry: NodeJS.Timeout | undefined;
    let backoffMs = 100;
    let outage = false;

    const deliver = (event: RegistryEvent) => {
      if (stopped) return;
      try {
        handler(event);
      } catch (err) {
        logger.warn({ err, event: event.kind }, "registry watch handler failed; event skipped");
      }
    };

    const put = (kv: IKeyValue) => {
      const key = kv.key.toString();
      if (key.startsWith(hostsPrefix)) {
        present.set(key, BigInt(kv.mod_revision));
        deliver({ kind: "host_put", host: decodeHost(kv) });
        return;
      }
      const route = decodeRoute(kv);
      if (route === undefined) return;
      present.set(key, route.revision);
      deliver({ kind: "route_put", route });
    };

    const remove = (key: string, revision: bigint) => {
      if (!present.delete(key)) return;
      if (key.startsWith(hostsPrefix)) {
        deliver({ kind: "host_removed", hostId: key.slice(hostsPrefix.length) });
        return;
      }
      const ids = routeIds(key);
      if (ids !== undefined) deliver({ kind: "route_removed", ...ids, revision });
    };

    /** Hosts first, then routes in revision order; after a compaction, what changed since. */
    const snapshot = async () => {
      const { kvs, revision } = await rangeAll(prefix);
      const hosts = kvs.filter((kv) => kv.key.toString().startsWith(hostsPrefix));
      const routes = kvs
        .filter((kv) => kv.key.toString().startsWith(routesPrefix))
        .sort((a, b) => compareRevisions(BigInt(a.mod_revision), BigInt(b.mod_revision)));
      const seen = new Set(kvs.map((kv) => kv.key.toString()));
      const changed = (kv: IKeyValue) => present.get(kv.key.toString()) !== BigInt(kv.mod_revision);
      for (const kv of hosts) if (changed(kv)) put(kv);
      for (const kv of routes) if (changed(kv)) put(kv);
      const gone = [...present.keys()].filter((key) => !seen.has(key));
      // Routes before hosts, as a lease's end reports them: a cache never keeps a route to a
      // host it already forgot.
      for (const key of gone) if (!key.startsWith(hostsPrefix)) remove(key, revision);
      for (const key of gone) if (key.startsWith(hostsPrefix)) remove(key, revision);
      lastRevision = revision;
    };

    const onResponse = (response: IWatchResponse) => {
      if (response.canceled) {
        dropStream();
        if (response.compact_revision !== "0" && response.compact_revision !== "") {
          logger.warn(
            { compact_revision: response.compact_revision, last_revision: lastRevision.toString() },
            "registry watch fell behind a compaction; taking a new snapshot",
          );
          void resync();
        } else {
          reconnectLater(new Error(`watch canceled: ${response.cancel_reason}`));
        }
        return;
      }
      if (response.created) {
        backoffMs = 100;
        if (outage) {
          outage = false;
          logger.info({ from_revision: (lastRevision + 1n).toString() }, "registry watch resumed");
        }
        return;
      }
      if (response.events.length === 0) {
        // A progress notification: every change up to this revision has been sent.
        const progress = BigInt(response.header.revision);
        if (progress > lastRevision) lastRevision = progress;
        return;
      }
      // A lease's end deletes its keys in one revision, hosts first (key order): report its
      // routes first, as the in-process registry does.
      const events = response.events
        .map((event, index) => ({ event, index, revision: BigInt(event.kv.mod_revision) }))
        .filter(({ revision }) => revision > lastRevision)
        .sort(
          (a, b) =>
            compareRevisions(a.revision, b.revision) ||
            hostDeleteLast(a.event) - hostDeleteLast(b.event) ||
            a.index - b.index,
        );
      for (const { event, revision } of events) {
        if (event.type === "Put") put(event.kv);
        else remove(event.kv.key.toString(), revision);
      }
      const last = events.at(-1);
      if (last !== undefined && last.revision > lastRevision) lastRevision = last.revision;
    };

    const hostDeleteLast = (event: IWatchResponse["events"][number]) =>
      event.type === "Delete" && event.kv.key.toString().startsWith(hostsPrefix) ? 1 : 0;

    const dropStream = () => {
      const current = stream;
      stream = undefined;
      if (current !== undefined) closeStream(current);
    };

    const connect = async () => {
      const opened = await client.watchClient.watch();
      if (stopped) {
        closeStream(opened);
        return;
      }
      stream = opened;
      const failed = (err: Error) => {
        if (stream !== opened) return;
        dropStream();
        reconnectLater(err);
      };
      opened
        .on("data", (response) => {
          if (stream === opened) onResponse(response);
        })
        .on("error", failed)
        .on("end", () => failed(new Error("watch stream ended")));
      opened.write({
        create_request: {
          key: Buffer.from(prefix),
          range_end: prefixEnd(Buffer.from(prefix)),
          start_revision: (lastRevision + 1n).toString(),
          progress_notify: true,
        },
      });
    };

    const reconnectLater = (err: unknown) => {
      if (stopped || retry !== undefined) return;
      if (!outage) {
        outage = true;
        logger.warn({ err }, "registry watch interrupted; resuming from the last revision seen");
      }
      retry = setTimeout(() => {
        retry = undefined;
        connect().catch(reconnectLater);
      }, backoffMs);
      retry.unref();
      backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
    };

    const resync = async () => {
      try {
        await snapshot();
        if (!stopped) await connect();
      } catch (err) {
        // The next attempt resumes from the old revision, finds it compacted, and comes back here.
        reconnectLater(err);
      }
    };

    await snapshot();
    await connect();
    return {
      async close() {
        stopped = true;
        clearTimeout(retry);
        dropStream();
      },
    };
  };

  return registry;
}

/**
 * Closes a stream from our side. Half-closing before cancelling matters: etcd3 takes an error on a
 * stream that is still writable (which a bare cancel is) for a failure of the host, resets every
 * other stream of the client, and after three such failures fails every call for 5 s.
 */
function closeStream(stream: Stream<unknown, unknown>): void {
  const duplex = stream as unknown as { readonly writable?: boolean };
  if (duplex.writable === true) stream.end();
  stream.cancel();
}

function compareRevisions(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The end of the key range holding every key that starts with `prefix`. */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  // Only 0xff bytes: every key after the prefix (etcd's "\0" range end).
  return Buffer.from([0]);
}
