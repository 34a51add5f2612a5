import { createHash } from "node:crypto";
import type { Logger } from "../../../lib/logging.ts";
import type {
  CheckpointStore,
  DeliveryMetrics,
  DeviceRef,
  EdgeHostRef,
  EdgePusher,
  PlannedItem,
  PushBatch,
  PushBatchResult,
  ResolvedRoute,
  RouteDirectory,
} from "./ports.ts";
import { PushCallError } from "./ports.ts";

/** The contract's limits of one PushBatch (edge_push_service.proto). */
export const BATCH_LIMITS = {
  items: 1_000,
  routes: 5_000,
  /** "delivery also keeps a batch under about 2 MiB": estimated, with room for framing. */
  bytes: 1_800_000,
  batchIdLength: 128,
} as const;

/** Where pushed items come from: the id makes batch ids (and so checkpoints) deterministic. */
export interface DispatchSource {
  /**
   * Stable per source event: `m:<message_id>:<part>` for MessageStored, `<kind>:<event_id>`
   * otherwise. A redelivered event has the same id, so the same batches and checkpoints.
   */
  readonly id: string;
  /** For metrics: message, receipt, key_changed, ... */
  readonly kind: string;
  /**
   * Record finished batches and skip recorded ones: for events from durable subscriptions, which
   * the broker may deliver again. Ephemeral events (presence, typing) are never redelivered.
   */
  readonly checkpoint: boolean;
}

export interface DispatchSummary {
  /** Devices the items address. */
  readonly addressed: number;
  /** Batches sent and answered by their host. */
  readonly batches: number;
  readonly pushed: number;
  /** No route: not connected anywhere. */
  readonly offline: number;
  readonly notConnected: number;
  readonly staleRoute: number;
  readonly overloaded: number;
  /** In batches a checkpoint says were pushed before (a redelivery). */
  readonly alreadyPushed: number;
  /** In batches whose call failed for good. */
  readonly failed: number;
  /**
   * Of `failed`, those whose host was unreachable or too slow (not a refusal): a durable event
   * with any is delivered again by the broker, and the checkpoints skip the batches that made it.
   */
  readonly unreachable: number;
}

/** A push call's retry policy: `attempts` calls in all, exponential backoff with jitter between them. */
export type PushRetryPolicy = {
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
};

/** 3 calls in all, 100 ms then 200 ms apart (before jitter). */
export const DEFAULT_PUSH_RETRY: PushRetryPolicy = { attempts: 3, baseDelayMs: 100, maxDelayMs: 1_000 };

/** The wait before call `attempt + 1`: doubling from the base, capped, with jitter down to half. */
export function pushRetryDelay(retry: PushRetryPolicy, attempt: number, random: () => number): number {
  const delay = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
  return delay * (0.5 + random() / 2);
}

export interface DispatcherOptions {
  readonly routes: RouteDirectory;
  readonly pusher: EdgePusher;
  readonly checkpoints: CheckpointStore;
  readonly metrics: DeliveryMetrics;
  readonly logger: Logger;
  /**
   * Calls per batch in all (the first and the retries) while the host answers UNAVAILABLE or
   * DEADLINE_EXCEEDED, with exponential backoff and jitter between them. Default 3 calls,
   * 100 ms then 200 ms (at most `maxDelayMs`).
   */
  readonly retry?: PushRetryPolicy;
  /**
   * After a host failed a batch for good, further batches for it fail at once for this long, so a
   * dead host (until its lease expires) does not hold every conversation that has a device on it
   * for the whole retry schedule. Default 3 s.
   */
  readonly hostCooldownMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly now?: () => number;
  readonly random?: () => number;
}

export interface Dispatcher {
  /**
   * Pushes items to the connected devices they address: groups devices by host, one batch per
   * host (split at the contract's limits), hosts in parallel. Never throws for a host or device
   * failure (history is the source of truth: devices Sync); throws only when the checkpoint store
   * fails, so the caller's event is redelivered.
   */
  dispatch(source: DispatchSource, items: readonly PlannedItem[]): Promise<DispatchSummary>;
}

export function deviceKey(device: DeviceRef): string {
  return `${device.userId}/${device.deviceId}`;
}

/**
 * The batch id of one chunk of a source's items for one host: `<source>@<host>#<chunk>`, or, when
 * that is longer than the contract allows, `<source prefix>#<sha-256 of the whole>`.
 */
export function batchIdOf(sourceId: string, hostId: string, chunk: number): string {
  const plain = `${sourceId}@${hostId}#${chunk}`;
  if (plain.length <= BATCH_LIMITS.batchIdLength) return plain;
  const digest = createHash("sha256").update(plain).digest("hex").slice(0, 40);
  return `${sourceId.slice(0, BATCH_LIMITS.batchIdLength - digest.length - 1)}#${digest}`;
}

/** A rough upper bound of the bytes one item adds to a PushBatch. */
export function estimatedSize(item: PlannedItem): number {
  const payload = item.payload;
  const ciphertext = payload.case === "message" ? payload.value.ciphertext.length : 0;
  return 256 + ciphertext + (item.cursor?.length ?? 0) + item.devices.length * 48;
}

interface HostGroup {
  readonly host: EdgeHostRef;
  readonly routes: Map<string, ResolvedRoute>;
}

/** Splits one host's items into batches within the contract's limits, keeping their order. */
function chunk(items: readonly PlannedItem[], routes: ReadonlyMap<string, ResolvedRoute>) {
  const chunks: Array<{ items: PlannedItem[]; routes: Map<string, ResolvedRoute>; bytes: number }> = [];
  let current: (typeof chunks)[number] | undefined;
  for (const item of items) {
    const size = estimatedSize(item);
    const added = item.devices.filter((d) => !current?.routes.has(deviceKey(d))).length;
    if (
      current === undefined ||
      current.items.length >= BATCH_LIMITS.items ||
      current.routes.size + added > BATCH_LIMITS.routes ||
      (current.items.length > 0 && current.bytes + size > BATCH_LIMITS.bytes)
    ) {
      current = { items: [], routes: new Map(), bytes: 0 };
      chunks.push(current);
    }
    current.items.push(item);
    current.bytes += size;
    for (const device of item.devices) {
      const key = deviceKey(device);
      const route = routes.get(key);
      if (route !== undefined) current.routes.set(key, route);
    }
  }
  return chunks;
}

export function createDispatcher(options: DispatcherOptions): Dispatcher {
  const { routes, pusher, checkpoints, metrics, logger } = options;
  const retry = options.retry ?? DEFAULT_PUSH_RETRY;
  const hostCooldownMs = options.hostCooldownMs ?? 3_000;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  /** host id@address -> until when batches for it fail at once. */
  const coolingDown = new Map<string, number>();

  /** The host's answer, or why there is none: unreachable (worth another try later) or refused. */
  async function call(
    host: EdgeHostRef,
    batch: PushBatch,
  ): Promise<PushBatchResult | "unreachable" | "refused"> {
    const hostKey = `${host.hostId}@${host.pushAddress}`;
    const until = coolingDown.get(hostKey);
    if (until !== undefined) {
      if (now() < until) return "unreachable";
      coolingDown.delete(hostKey);
    }
    for (let attempt = 1; ; attempt++) {
      try {
        return await pusher.push(host, batch);
      } catch (err) {
        const retryable = err instanceof PushCallError && err.retryable;
        if (retryable && !err.exhausted && attempt < retry.attempts) {
          await sleep(pushRetryDelay(retry, attempt, random));
          continue;
        }
        if (retryable) coolingDown.set(hostKey, now() + hostCooldownMs);
        logger.warn(
          {
            err,
            batch_id: batch.batchId,
            host_id: host.hostId,
            attempts: attempt,
            devices: batch.routes.length,
          },
          retryable
            ? "push batch given up for now; the event will be delivered again"
            : "push batch refused; its devices catch up through Sync",
        );
        return retryable ? "unreachable" : "refused";
      }
    }
  }

  /**
   * Each message item's latency from acceptance, once per recipient device its host took it for
   * (the sending device's echo of its own message is no delivery).
   */
  function recordPushLatencies(items: readonly PlannedItem[], reached: ReadonlySet<string>): void {
    const at = now();
    for (const item of items) {
      if (item.payload.case !== "message") continue;
      const { acceptedAt, sender } = item.payload.value;
      if (acceptedAt === undefined) continue;
      const latency = Math.max(0, at - (Number(acceptedAt.seconds) * 1000 + acceptedAt.nanos / 1e6));
      const senderKey = sender === undefined ? undefined : deviceKey(sender);
      for (const device of item.devices) {
        const key = deviceKey(device);
        if (key !== senderKey && reached.has(key)) metrics.messagePushed(latency);
      }
    }
  }

  return {
    async dispatch(source, items) {
      const tally = {
        addressed: 0,
        batches: 0,
        pushed: 0,
        offline: 0,
        notConnected: 0,
        staleRoute: 0,
        overloaded: 0,
        alreadyPushed: 0,
        failed: 0,
        unreachable: 0,
      };
      // Route every addressed device once; keep only what reaches a known host.
      const groups = new Map<string, HostGroup>();
      const hostOf = new Map<string, string>();
      const seen = new Set<string>();
      for (const item of items) {
        for (const device of item.devices) {
          const key = deviceKey(device);
          if (seen.has(key)) continue;
          seen.add(key);
          const route = routes.route(device);
          const host = route === undefined ? undefined : routes.host(route.hostId);
          if (route === undefined || host === undefined) {
            tally.offline++;
            continue;
          }
          let group = groups.get(host.hostId);
          if (group === undefined) {
            group = { host, routes: new Map() };
            groups.set(host.hostId, group);
          }
          group.routes.set(key, route);
          hostOf.set(key, host.hostId);
        }
      }
      tally.addressed = seen.size;
      metrics.fanOut(source.kind, seen.size);
      if (tally.offline > 0) metrics.pushes("offline", tally.offline);

      await Promise.all(
        [...groups.values()].map(async (group) => {
          const hostId = group.host.hostId;
          // This host's share of each item, in the items' order.
          const hostItems: PlannedItem[] = [];
          for (const item of items) {
            const devices = item.devices.filter((d) => hostOf.get(deviceKey(d)) === hostId);
            if (devices.length === 0) continue;
            hostItems.push(devices.length === item.devices.length ? item : { ...item, devices });
          }
          const chunks = chunk(hostItems, group.routes);
          for (const [index, part] of chunks.entries()) {
            const batch: PushBatch = {
              batchId: batchIdOf(source.id, hostId, index),
              hostId,
              routes: [...part.routes.values()],
              items: part.items,
            };
            if (source.checkpoint && (await checkpoints.has(batch.batchId))) {
              metrics.checkpointHit();
              metrics.pushes("already_pushed", batch.routes.length);
              tally.alreadyPushed += batch.routes.length;
              continue;
            }
            const result = await call(group.host, batch);
            if (typeof result === "string") {
              metrics.pushes("failed", batch.routes.length);
              tally.failed += batch.routes.length;
              if (result === "unreachable") tally.unreachable += batch.routes.length;
              continue;
            }
            tally.batches++;
            const reached = new Set<string>();
            for (const outcome of result.results) {
              metrics.pushes(outcome.outcome, 1);
              if (outcome.outcome === "pushed") {
                tally.pushed++;
                reached.add(deviceKey(outcome.device));
              } else if (outcome.outcome === "not_connected") tally.notConnected++;
              else if (outcome.outcome === "stale_route") tally.staleRoute++;
              else tally.overloaded++;
              // NOT_CONNECTED, STALE_ROUTE and OVERLOADED are not retried: the device Syncs. A
              // host holding a newer stream than our route says our cache is behind: drop it.
              const used = part.routes.get(deviceKey(outcome.device));
              if (used !== undefined && outcome.routeRevision > used.revision) {
                routes.forgetOlderThan(used.device, outcome.routeRevision);
              }
            }
            if (reached.size > 0) recordPushLatencies(part.items, reached);
            // Before the event is acknowledged: a redelivery after a crash from here on skips it.
            if (source.checkpoint) await checkpoints.record(batch.batchId);
          }
        }),
      );
      return tally;
    },
  };
}
