import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import type {
  PushBatchRequest,
  PushBatchResponseSchema,
} from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { PushOutcome } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgeHostState } from "../../gen/parley/delivery/v1/registry_pb.ts";
import type { ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { KeyChangeKind } from "../../gen/parley/events/v1/key_events_pb.ts";
import type { FieldViolation } from "../../lib/errors.ts";
import { failedPrecondition, invalidArgument, isParleyError, unavailable } from "../../lib/errors.ts";
import { VALIDATION_FAILED } from "../../lib/grpc/validation.ts";
import type { Logger } from "../../lib/logging.ts";
import type { HostLease } from "../../lib/registry/registry.ts";
import { tokenPredates } from "../auth/verifier.ts";
import type { StreamMetrics } from "../metrics.ts";
import { noStreamMetrics } from "../metrics.ts";
import type { CloseSpec, StreamKind } from "./device-stream.ts";
import { Closes, DeviceStream, deviceKey, shutdownClose } from "./device-stream.ts";
import type { PresenceReporter } from "./presence-reporter.ts";
import { framesForDevice } from "./push-frames.ts";

export interface StreamLimits {
  readonly heartbeatIntervalMs: number;
  readonly queueLimit: number;
  readonly maxBadFramesPerMinute: number;
  readonly closeGraceMs: number;
}

export interface StreamHubOptions {
  readonly hostId: () => string;
  /** This host's registry lease; streams wait for it while the edge registers at start-up. */
  readonly lease: () => Promise<HostLease>;
  readonly presence: PresenceReporter;
  readonly limits: StreamLimits;
  readonly logger: Logger;
  /**
   * A pushed KeyChanged DEVICE_REMOVED named `device` (removed at `removedAt`): called once per
   * such item, after the batch is queued (the edge drops the device from its revocation cache).
   * The hub itself revokes the device's stream here, if it has one (see `revoke`).
   */
  readonly onDeviceRemoved?: (device: DeviceAddress, removedAt: Date) => void;
  /** Streams opened and closed (edge/metrics.ts). Default: not counted. */
  readonly metrics?: StreamMetrics;
}

export type PushBatchResponseInit = MessageInitShape<typeof PushBatchResponseSchema>;

/** How many answered batches are remembered, so an exact retry is answered without pushing again. */
const REMEMBERED_BATCHES = 4096;

/** How long a new stream waits for this host's lease (at start-up, or re-registering after losing it). */
const LEASE_WAIT_MS = 5_000;

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no registry lease after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The device streams of this edge process: one live stream per device (a newer one replaces the
 * older with CLOSE_REASON_REPLACED), each registered as the device's route under this host's lease
 * and reported to presence; the target of EdgePushService.PushBatch; and the drain on shutdown.
 */
export interface StreamHub {
  /** Live streams. */
  readonly size: number;
  readonly state: "serving" | "draining";
  /**
   * Opens the device's stream: replaces its current one, routes the device here (the returned
   * stream knows its revision) and reports it present. Pushes for it are held until the caller
   * makes it live (`goLive` or `resume`).
   */
  open(
    device: DeviceAddress,
    kind: StreamKind,
    options: {
      readonly expiresAt: Date;
      readonly tokenIssuedAt?: Date;
      readonly abortTransport?: () => void;
    },
  ): Promise<DeviceStream>;
  get(device: DeviceAddress): DeviceStream | undefined;
  /**
   * The device was removed at `removedAt`: its live stream here, if opened with a token issued up
   * to then, is closed with CLOSE_REASON_DEVICE_REVOKED (frames already queued are written first).
   * A stream of the device id registered anew (a newer token) is left alone. True if one closed.
   */
  revoke(device: DeviceAddress, removedAt: Date): boolean;
  streams(): DeviceStream[];
  /** A heartbeat: the user is active or idle; refreshes presence. */
  heartbeat(stream: DeviceStream, idle: boolean): void;
  /** Reports every live stream not reported for an interval (the periodic presence refresh). */
  refreshPresence(): void;
  /** EdgePushService.PushBatch. */
  push(request: PushBatchRequest): PushBatchResponseInit;
  /**
   * Starts draining: every stream (and every stream opened from now on) gets a Drain frame naming
   * `reconnectUrlFor(device)`, or a SHUTDOWN close when that is undefined (no other host). Resolves
   * once every stream closed, or after `timeoutMs` (left-over streams are closed with SHUTDOWN).
   */
  drain(options: DrainOptions): Promise<void>;
  /** Closes every stream with `spec` (the host lost its lease: its routes are gone). */
  closeAll(spec: CloseSpec): void;
  /**
   * The registry routed the device to another host at `revision` (it opened a stream there): the
   * stream here, if older, is closed with CLOSE_REASON_REPLACED at once, not at the next push.
   * True if one closed.
   */
  routedElsewhere(device: { readonly userId: string; readonly deviceId: string }, revision: bigint): boolean;
}

export interface DrainOptions {
  readonly reconnectUrlFor: (device: DeviceAddress) => string | undefined;
  readonly timeoutMs: number;
  /** Close.retry_after of the SHUTDOWN closes. */
  readonly retryAfterMs: number;
}

export function createStreamHub(options: StreamHubOptions): StreamHub {
  const { logger, limits } = options;
  const metrics = options.metrics ?? noStreamMetrics;
  const live = new Map<string, DeviceStream>();
  const answered = new Map<string, PushBatchResponseInit>();
  let nextId = 1;
  let draining: DrainOptions | undefined;

  const release = (stream: DeviceStream, lease: HostLease, revision: bigint) => {
    lease
      .releaseDevice(stream.device.userId, stream.device.deviceId, revision)
      .catch((err: unknown) =>
        logger.warn(
          { err, user_id: stream.device.userId, device_id: stream.device.deviceId },
          "could not release a device route; it expires with this host's lease",
        ),
      );
  };

  const onClose = (stream: DeviceStream) => {
    metrics.closed(stream.endedBy ?? "failed");
    if (live.get(stream.key) === stream) {
      live.delete(stream.key);
      // Only when no newer stream of the device lives here: a replaced stream's DISCONNECTED
      // must not hide the stream that replaced it.
      options.presence.report(stream.device, "disconnected");
    }
    if (stream.lease !== undefined && stream.revision !== undefined)
      release(stream, stream.lease, stream.revision);
    logger.debug(
      { stream_id: stream.id, user_id: stream.device.userId, device_id: stream.device.deviceId },
      "stream closed",
    );
  };

  const drainOne = (stream: DeviceStream, drain: DrainOptions) => {
    const url = drain.reconnectUrlFor(stream.device);
    if (url === undefined) stream.close(shutdownClose(drain.retryAfterMs));
    else stream.drain(url, drain.timeoutMs, drain.retryAfterMs);
  };

  const hub: StreamHub = {
    get size() {
      return live.size;
    },
    get state() {
      return draining === undefined ? "serving" : "draining";
    },

    async open(device, kind, streamOptions) {
      const stream = new DeviceStream({
        id: nextId++,
        kind,
        device,
        expiresAt: streamOptions.expiresAt,
        ...(streamOptions.tokenIssuedAt === undefined ? {} : { tokenIssuedAt: streamOptions.tokenIssuedAt }),
        heartbeatIntervalMs: limits.heartbeatIntervalMs,
        queueLimit: limits.queueLimit,
        maxBadFramesPerMinute: limits.maxBadFramesPerMinute,
        closeGraceMs: limits.closeGraceMs,
        ...(streamOptions.abortTransport === undefined
          ? {}
          : { abortTransport: streamOptions.abortTransport }),
        onClose,
      });
      metrics.opened(kind);
      const previous = live.get(stream.key);
      // In the map before the route exists: pushes routed to it meanwhile are held, not lost.
      live.set(stream.key, stream);
      previous?.close(Closes.replaced);
      let revision: bigint;
      let lease: HostLease;
      try {
        lease = await withTimeout(options.lease(), LEASE_WAIT_MS);
        revision = await lease.assignDevice(device.userId, device.deviceId);
      } catch (err) {
        stream.abort();
        if (isParleyError(err)) throw err;
        throw unavailable(
          "REGISTRY_UNAVAILABLE",
          "cannot register the stream right now: retry with backoff",
          {
            cause: err,
          },
        );
      }
      stream.revision = revision;
      stream.lease = lease;
      if (stream.isClosed) {
        // Replaced (or gone) while registering: undo the route unless a newer stream owns it.
        release(stream, lease, revision);
        return stream;
      }
      stream.presenceReportedAt = Date.now();
      options.presence.report(device, "active");
      if (draining !== undefined) queueMicrotask(() => draining !== undefined && drainOne(stream, draining));
      return stream;
    },

    get(device) {
      return live.get(deviceKey(device));
    },

    revoke(device, removedAt) {
      const stream = live.get(deviceKey(device));
      if (stream === undefined || stream.isClosed || !tokenPredates(stream.tokenIssuedAt, removedAt)) {
        return false;
      }
      logger.info(
        { stream_id: stream.id, user_id: device.userId, device_id: device.deviceId },
        "device removed: stream revoked",
      );
      stream.close(Closes.deviceRevoked);
      return true;
    },

    streams() {
      return [...live.values()];
    },

    heartbeat(stream, idle) {
      const activity = idle ? "idle" : "active";
      const changed = stream.activity !== activity;
      stream.activity = activity;
      if (stream.isClosed || !changed) return;
      // Only a change is reported at once. An unchanged activity is kept alive by
      // refreshPresence, which reports every stream once per interval in batches of 1,000:
      // reporting each heartbeat instead cost one UpdatePresence call per heartbeat (heartbeats
      // arrive spread out, so they rarely share a batch), most of an idle edge's CPU (bench S3).
      stream.presenceReportedAt = Date.now();
      options.presence.report(stream.device, activity);
    },

    refreshPresence() {
      const due = Date.now() - limits.heartbeatIntervalMs;
      for (const stream of live.values()) {
        if (stream.revision === undefined || stream.presenceReportedAt > due) continue;
        stream.presenceReportedAt = Date.now();
        options.presence.report(stream.device, stream.activity);
      }
    },

    push(request) {
      const hostId = options.hostId();
      if (request.hostId !== hostId) {
        throw failedPrecondition(
          "WRONG_HOST",
          `this edge host is ${hostId}, not ${request.hostId}: refresh the registry and route again`,
          { metadata: { hostId } },
        );
      }
      const remembered = answered.get(request.batchId);
      if (remembered !== undefined) return remembered;

      const routeIndex = new Map<string, number>();
      request.routes.forEach((route, i) => {
        if (route.device !== undefined) routeIndex.set(deviceKey(route.device), i);
      });
      const violations: FieldViolation[] = [];
      const frames = new Map<string, ServerFrame[]>();
      request.items.forEach((item, i) => {
        item.devices.forEach((device, j) => {
          const key = deviceKey(device);
          if (!routeIndex.has(key)) {
            violations.push({
              field: `items[${i}].devices[${j}]`,
              description: "must be one of the batch's routes",
              reason: "PUSH_ITEM_DEVICE_WITHOUT_ROUTE",
            });
            return;
          }
          let list = frames.get(key);
          if (list === undefined) {
            list = [];
            frames.set(key, list);
          }
          list.push(...framesForDevice(item, device));
        });
      });
      if (violations.length > 0) {
        throw invalidArgument(
          VALIDATION_FAILED,
          "every device of an item must be one of the batch's routes",
          {
            violations: violations.slice(0, 20),
          },
        );
      }

      const results = request.routes.map((route) => {
        const device = route.device ?? { userId: "", deviceId: "" };
        const result = (outcome: PushOutcome, revision = 0n) => ({
          device: { userId: device.userId, deviceId: device.deviceId },
          outcome,
          routeRevision: revision,
        });
        const stream = live.get(deviceKey(device));
        if (stream === undefined || stream.isClosed) return result(PushOutcome.NOT_CONNECTED);
        // A stream still registering gets a revision above any delivery can know: it is the newest.
        if (stream.revision !== undefined && stream.revision < route.routeRevision) {
          // The device reconnected since (elsewhere): this stream is stale.
          stream.close(Closes.replaced);
          return result(PushOutcome.STALE_ROUTE, stream.revision);
        }
        const outcome = stream.push(frames.get(stream.key) ?? []);
        if (outcome === "closed") return result(PushOutcome.NOT_CONNECTED);
        return result(
          outcome === "pushed" ? PushOutcome.PUSHED : PushOutcome.OVERLOADED,
          stream.revision ?? 0n,
        );
      });
      const response: PushBatchResponseInit = {
        results,
        hostState: draining === undefined ? EdgeHostState.SERVING : EdgeHostState.DRAINING,
      };
      // Removals after the batch is queued: a removed device's own stream gets its KeyChanged,
      // then its Close.
      for (const item of request.items) {
        const payload = item.payload;
        if (payload.case !== "keyChanged" || payload.value.kind !== KeyChangeKind.DEVICE_REMOVED) continue;
        const removed = payload.value.device;
        const at = payload.value.effectiveAt;
        if (removed === undefined || at === undefined) continue;
        const removedAt = timestampDate(at);
        hub.revoke(removed, removedAt);
        options.onDeviceRemoved?.(removed, removedAt);
      }
      answered.set(request.batchId, response);
      if (answered.size > REMEMBERED_BATCHES) {
        const oldest = answered.keys().next();
        if (oldest.done !== true) answered.delete(oldest.value);
      }
      return response;
    },

    async drain(drainOptions) {
      draining = drainOptions;
      const streams = [...live.values()];
      for (const stream of streams) drainOne(stream, drainOptions);
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, drainOptions.timeoutMs);
      });
      const allClosed = async () => {
        // Streams opened while draining are drained too; wait until none is left.
        while (live.size > 0) await Promise.all([...live.values()].map((s) => s.closed));
      };
      await Promise.race([allClosed(), timedOut]);
      clearTimeout(timer);
      for (const stream of [...live.values()]) stream.close(shutdownClose(drainOptions.retryAfterMs));
    },

    closeAll(spec) {
      for (const stream of [...live.values()]) stream.close(spec);
    },
    routedElsewhere(device, revision) {
      const stream = live.get(deviceKey(device));
      // A stream still registering has no revision yet: its own assignment comes after this one.
      if (stream === undefined || stream.isClosed || stream.revision === undefined) return false;
      if (stream.revision >= revision) return false;
      stream.close(Closes.replaced);
      return true;
    },
  };
  return hub;
}
