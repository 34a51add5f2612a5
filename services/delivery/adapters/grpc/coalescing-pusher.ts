import { createHash } from "node:crypto";
import type { Context } from "@opentelemetry/api";
import { context, TraceFlags, trace } from "@opentelemetry/api";
import type { PushRetryPolicy } from "../../domain/dispatch.ts";
import {
  BATCH_LIMITS,
  DEFAULT_PUSH_RETRY,
  deviceKey,
  estimatedSize,
  pushRetryDelay,
} from "../../domain/dispatch.ts";
import type {
  EdgeHostRef,
  EdgePusher,
  PushBatch,
  PushBatchResult,
  ResolvedRoute,
} from "../../domain/ports.ts";
import { PushCallError } from "../../domain/ports.ts";

export interface CoalescingPusherOptions {
  /** Runs the flush of what one turn queued; default `setImmediate` (after the turn's I/O callbacks). */
  readonly schedule?: (flush: () => void) => void;
  /** How a merged call is retried as a whole: the dispatcher's policy (default 3 calls, 100 ms, 200 ms). */
  readonly retry?: PushRetryPolicy;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly random?: () => number;
}

interface Queued {
  readonly batch: PushBatch;
  /** The caller's context: its trace continues through the call that carries its batch. */
  readonly context: Context;
  readonly sampled: boolean;
  readonly resolve: (result: PushBatchResult) => void;
  readonly reject: (error: unknown) => void;
}

interface Merge {
  readonly parts: Queued[];
  readonly routes: Map<string, ResolvedRoute>;
  items: number;
  bytes: number;
  /** The one sampled part, if any: the call runs in its context, so its trace shows the push. */
  lead: Queued | undefined;
}

function isSampled(active: Context): boolean {
  const span = trace.getSpan(active);
  return span !== undefined && (span.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0;
}

/**
 * An EdgePusher that sends the batches queued for one host within one event-loop turn as one
 * PushBatch call (within the contract's limits), and answers each batch with its own devices'
 * outcomes. Under load many events are dispatched at once (the consumers run up to 64 keys
 * concurrently), and each made its own call per host: a message and its receipt were two calls
 * per message, the gRPC client and server work of which outweighed the push itself.
 *
 * - A device must keep one route per call: a batch that names a device at another revision than
 *   the merge already does goes into the next call.
 * - At most one batch from a sampled trace per call, and the call runs in that batch's context,
 *   so a traced message still has its PushBatch and edge spans in its own trace. Unsampled batches
 *   join any call.
 * - A merged call gets an id of its own (a digest of its batches' ids). One that fails
 *   retryably (UNAVAILABLE, DEADLINE_EXCEEDED) is retried as a whole, the same request under the
 *   same id, so the edge still drops an exact retry of what it already pushed, with the
 *   dispatcher's backoff; after the last call each batch fails as `exhausted`, which the dispatcher
 *   gives up at once (no retries of its own; the event comes back).
 * - WRONG_HOST fails every batch of the call. Another refusal (INVALID_ARGUMENT) sends the batches
 *   again one per call, so only the batch at fault is refused.
 */
export function createCoalescingPusher(inner: EdgePusher, options: CoalescingPusherOptions = {}): EdgePusher {
  const schedule = options.schedule ?? ((flush: () => void) => void setImmediate(flush));
  const retry = options.retry ?? DEFAULT_PUSH_RETRY;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const random = options.random ?? Math.random;
  /** Per host (id and address), what this turn queued, in order. */
  const queues = new Map<string, { host: EdgeHostRef; queued: Queued[] }>();

  const flush = () => {
    const hosts = [...queues.values()];
    queues.clear();
    for (const { host, queued } of hosts) {
      let merges: Merge[];
      try {
        merges = plan(queued);
      } catch (error) {
        // Never leave a caller waiting: a planning bug fails its batches, and their events come back.
        for (const part of queued) part.reject(error);
        continue;
      }
      for (const merge of merges) void send(host, merge);
    }
  };

  return {
    push(host, batch) {
      return new Promise<PushBatchResult>((resolve, reject) => {
        const key = `${host.hostId}@${host.pushAddress}`;
        const first = queues.size === 0;
        let queue = queues.get(key);
        if (queue === undefined) {
          queue = { host, queued: [] };
          queues.set(key, queue);
        }
        const active = context.active();
        queue.queued.push({ batch, context: active, sampled: isSampled(active), resolve, reject });
        if (first) schedule(flush);
      });
    },
  };

  async function send(host: EdgeHostRef, merge: Merge): Promise<void> {
    const { parts } = merge;
    const only = parts.length === 1 ? parts[0] : undefined;
    if (only !== undefined) {
      await settle(only, () => context.with(only.context, () => inner.push(host, only.batch)));
      return;
    }
    const lead = merge.lead ?? (parts[0] as Queued);
    const batch: PushBatch = {
      batchId: mergedId(parts),
      hostId: host.hostId,
      routes: [...merge.routes.values()],
      items: parts.flatMap((p) => p.batch.items),
    };
    let result: PushBatchResult;
    for (let attempt = 1; ; attempt++) {
      try {
        result = await context.with(lead.context, () => inner.push(host, batch));
        break;
      } catch (error) {
        const failed = error instanceof PushCallError ? error : undefined;
        if (failed?.retryable === true && attempt < retry.attempts) {
          await sleep(pushRetryDelay(retry, attempt, random));
          continue;
        }
        if (failed !== undefined && !failed.retryable && failed.reason !== "WRONG_HOST") {
          await Promise.all(
            parts.map((part) =>
              settle(part, () => context.with(part.context, () => inner.push(host, part.batch))),
            ),
          );
          return;
        }
        const final =
          failed?.retryable === true
            ? new PushCallError(failed.message, true, failed.reason, failed, true)
            : error;
        for (const part of parts) part.reject(final);
        return;
      }
    }
    const byDevice = new Map(result.results.map((r) => [deviceKey(r.device), r]));
    for (const part of parts) {
      const results = [];
      for (const route of part.batch.routes) {
        const found = byDevice.get(deviceKey(route.device));
        if (found !== undefined) results.push(found);
      }
      part.resolve({ results, draining: result.draining });
    }
  }
}

async function settle(part: Queued, call: () => Promise<PushBatchResult>): Promise<void> {
  try {
    part.resolve(await call());
  } catch (error) {
    part.reject(error);
  }
}

/** Groups one host's queued batches into calls, in queue order, within the limits and rules above. */
function plan(queued: readonly Queued[]): Merge[] {
  const merges: Merge[] = [];
  let current: Merge | undefined;
  for (const part of queued) {
    const { batch } = part;
    const bytes = batch.items.reduce((n, item) => n + estimatedSize(item), 0);
    if (current === undefined || !fits(current, part, bytes)) {
      current = { parts: [], routes: new Map(), items: 0, bytes: 0, lead: undefined };
      merges.push(current);
    }
    current.parts.push(part);
    current.items += batch.items.length;
    current.bytes += bytes;
    if (part.sampled) current.lead = part;
    for (const route of batch.routes) current.routes.set(deviceKey(route.device), route);
  }
  return merges;
}

function fits(merge: Merge, part: Queued, bytes: number): boolean {
  if (part.sampled && merge.lead !== undefined) return false;
  if (merge.items + part.batch.items.length > BATCH_LIMITS.items) return false;
  if (merge.bytes + bytes > BATCH_LIMITS.bytes) return false;
  let added = 0;
  for (const route of part.batch.routes) {
    const known = merge.routes.get(deviceKey(route.device));
    if (known === undefined) added++;
    else if (known.revision !== route.revision) return false;
  }
  return merge.routes.size + added <= BATCH_LIMITS.routes;
}

/** Stable for the same batches in the same order, and within the contract's 128 characters. */
function mergedId(parts: readonly Queued[]): string {
  const digest = createHash("sha256");
  for (const part of parts) digest.update(part.batch.batchId).update("\n");
  return `merged:${parts.length}:${digest.digest("hex").slice(0, 40)}`;
}
