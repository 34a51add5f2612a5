/** The ports the delivery domain needs; adapters in ../adapters implement them. */
import type { PushItem } from "../../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { PresenceChanged, TypingChanged } from "../../../gen/parley/events/v1/presence_events_pb.ts";

export type { ConversationDirectory, ConversationMembership } from "../../../lib/views/conversation-view.ts";

export interface DeviceRef {
  readonly userId: string;
  readonly deviceId: string;
}

/** Where a connected device's stream is: its host, and the route revision (the push's fencing token). */
export interface ResolvedRoute {
  readonly device: DeviceRef;
  readonly hostId: string;
  readonly revision: bigint;
}

/** An edge host as delivery reaches it. */
export interface EdgeHostRef {
  readonly hostId: string;
  /** host:port of its EdgePushService. */
  readonly pushAddress: string;
  readonly draining: boolean;
}

/**
 * Device -> host routes, answered from a local cache kept by a registry watch (etcd in the
 * cluster, the in-process registry in the embedded profile): routing never waits on the registry.
 */
export interface RouteDirectory {
  /** The device's route, or undefined when it is not connected anywhere (or its host is gone). */
  route(device: DeviceRef): ResolvedRoute | undefined;
  /** Every connected device of a user. */
  devicesOf(userId: string): readonly ResolvedRoute[];
  host(hostId: string): EdgeHostRef | undefined;
  /**
   * An edge answered that it holds the device's stream at `revision` (0: none): a cached route
   * older than that is stale, so drop it until the watch brings the new one.
   */
  forgetOlderThan(device: DeviceRef, revision: bigint): void;
}

/** One thing to push and the devices it goes to (a message item addresses exactly one device). */
export interface PlannedItem {
  readonly devices: readonly DeviceRef[];
  readonly payload: Exclude<PushItem["payload"], { case: undefined }>;
  /** A message's inbox cursor for its one device; empty otherwise. */
  readonly cursor?: Uint8Array;
  readonly traceparent: string;
}

/** One PushBatch call: items for devices of one host, with the routes they were found at. */
export interface PushBatch {
  readonly batchId: string;
  readonly hostId: string;
  readonly routes: readonly ResolvedRoute[];
  readonly items: readonly PlannedItem[];
}

export type DeviceOutcome = "pushed" | "not_connected" | "stale_route" | "overloaded";

export interface PushBatchResult {
  /** One per route of the batch. */
  readonly results: ReadonlyArray<{
    readonly device: DeviceRef;
    readonly outcome: DeviceOutcome;
    /** The revision of the stream the host holds for the device (0: none). */
    readonly routeRevision: bigint;
  }>;
  readonly draining: boolean;
}

/** A PushBatch call that failed as a whole. */
export class PushCallError extends Error {
  override readonly name = "PushCallError";
  /** UNAVAILABLE, DEADLINE_EXCEEDED: the same batch may be sent again. */
  readonly retryable: boolean;
  /** The status reason, e.g. WRONG_HOST, UNAVAILABLE. */
  readonly reason: string;
  /**
   * Retried as often as the policy allows already (a merged call the coalescing pusher retried as
   * a whole, under its own id): the caller gives the batch up at once instead of retrying it.
   */
  readonly exhausted: boolean;

  constructor(message: string, retryable: boolean, reason: string, cause?: unknown, exhausted = false) {
    super(message, cause === undefined ? undefined : { cause });
    this.retryable = retryable;
    this.reason = reason;
    this.exhausted = exhausted;
  }
}

/** The client side of each edge host's EdgePushService. */
export interface EdgePusher {
  push(host: EdgeHostRef, batch: PushBatch): Promise<PushBatchResult>;
}

/**
 * Finished batches, by batch id, so a redelivered event (a worker that crashed after pushing,
 * before acknowledging) resends nothing already pushed. Redis in the cluster (SET with a TTL,
 * shared by every delivery worker and surviving their crashes); an in-process map with a TTL in
 * the embedded profile.
 */
export interface CheckpointStore {
  has(batchId: string): Promise<boolean>;
  record(batchId: string): Promise<void>;
}

export type DeviceActivity = "active" | "idle";
export type PresenceState = "online" | "away" | "offline";

/** One live stream's presence, per (device, host): a late disconnect from an old host hides nothing. */
export interface DevicePresence {
  readonly device: DeviceRef;
  readonly hostId: string;
  readonly activity: DeviceActivity;
  /** When the host last reported it (ms since the epoch). */
  readonly updatedAt: number;
  readonly expiresAt: number;
}

/** A user's aggregate presence as last published. */
export interface UserPresenceRecord {
  readonly state: PresenceState;
  /** When any of the user's devices was last connected (ms), if ever within retention. */
  readonly lastSeen: number | undefined;
  readonly changedAt: number;
}

/**
 * Presence with TTLs: Redis in the cluster (a hash of device entries per user, a sorted set of
 * expiry times for the sweep, a per-user record for last seen, all expired by Redis), in-process
 * maps in the embedded profile.
 */
export interface PresenceStore {
  /** Records live devices, each until its `expiresAt`. */
  upsert(entries: readonly DevicePresence[]): Promise<void>;
  /** Removes a (device, host) entry (the stream closed). */
  remove(device: DeviceRef, hostId: string): Promise<void>;
  /** The user's live (unexpired) device entries at `now`. */
  devicesOf(userId: string, now: number): Promise<readonly DevicePresence[]>;
  /** Removes and returns the entries that expired at or before `now` (for the sweep). */
  takeExpired(now: number): Promise<readonly DevicePresence[]>;
  userRecord(userId: string): Promise<UserPresenceRecord | undefined>;
  setUserRecord(userId: string, record: UserPresenceRecord): Promise<void>;
}

/** Ephemeral presence and typing events (non-persistent topics). */
export interface EphemeralEvents {
  presenceChanged(event: PresenceChanged): void;
  typingChanged(event: TypingChanged): void;
}

export type PushMetricOutcome =
  | DeviceOutcome
  /** No route: the device is offline (it Syncs when it reconnects). */
  | "offline"
  /** The batch was already pushed before a redelivery (checkpoint hit). */
  | "already_pushed"
  /** The call failed for good (after retries) or the host is cooling down after such a failure. */
  | "failed";

/** What SREs watch on delivery (OpenTelemetry adapter in service.ts). */
export interface DeliveryMetrics {
  /** Devices an event addresses (before routing). */
  fanOut(kind: string, devices: number): void;
  checkpointHit(): void;
  pushes(outcome: PushMetricOutcome, devices: number): void;
  /**
   * A message reached a device's stream (its host answered PUSHED), `ms` after the sender accepted
   * it (its accepted_at): once per message and device, redeliveries included.
   */
  messagePushed(ms: number): void;
}

export const noMetrics: DeliveryMetrics = {
  fanOut() {},
  checkpointHit() {},
  pushes() {},
  messagePushed() {},
};
