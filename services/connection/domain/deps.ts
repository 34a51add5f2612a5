import { newGroupId, newMessageId } from "../../../lib/ids.ts";
import type { RateLimiter } from "../../../lib/rate-limit.ts";
import type { ConnectionStore } from "./connection-store.ts";
import { isStoreConflict } from "./connection-store.ts";
import type { DeviceDirectory } from "./device-directory.ts";
import { noDevices } from "./device-directory.ts";
import { concurrentModification } from "./errors.ts";
import type { EventEncoder } from "./events.ts";

/** What the connection domain needs from the outside. */
export interface ConnectionDomainDeps {
  readonly store: ConnectionStore;
  /** Domain events -> outbox events (topic, key, protobuf payload). */
  readonly encodeEvent: EventEncoder;
  /** Devices shown with ACCEPTED connections; none by default. */
  readonly devices?: DeviceDirectory;
  /**
   * Limits new connection requests: one token per request, keyed by the caller's user id.
   * Unlimited by default.
   */
  readonly requestLimiter?: RateLimiter;
  /** Called after a commit wrote events, so the outbox relay publishes at once. */
  readonly onEventsWritten?: () => void;
  /** Failures the domain works around instead of answering with them (logged by the service). */
  readonly reportError?: (err: unknown, message: string) => void;
  readonly clock?: () => Date;
  /** UUIDv7 of each event. */
  readonly newEventId?: () => string;
  /** UUIDv7 of each new group. */
  readonly newGroupId?: () => string;
}

/** The deps with every default filled in. */
export interface ResolvedDeps {
  readonly store: ConnectionStore;
  readonly encodeEvent: EventEncoder;
  readonly devices: DeviceDirectory;
  readonly requestLimiter: RateLimiter;
  readonly onEventsWritten: () => void;
  readonly reportError: (err: unknown, message: string) => void;
  readonly clock: () => Date;
  readonly newEventId: () => string;
  readonly newGroupId: () => string;
}

/** A limiter that allows everything. */
const unlimited: RateLimiter = {
  async take() {
    return { allowed: true };
  },
};

export function resolveDeps(deps: ConnectionDomainDeps): ResolvedDeps {
  return {
    store: deps.store,
    encodeEvent: deps.encodeEvent,
    devices: deps.devices ?? noDevices,
    requestLimiter: deps.requestLimiter ?? unlimited,
    onEventsWritten: deps.onEventsWritten ?? (() => {}),
    reportError: deps.reportError ?? (() => {}),
    clock: deps.clock ?? (() => new Date()),
    // A message id is a UUIDv7 like an event id must be.
    newEventId: deps.newEventId ?? newMessageId,
    newGroupId: deps.newGroupId ?? newGroupId,
  };
}

/** Read-decide-commit rounds before a change that keeps losing races gives up. */
export const MAX_COMMIT_ATTEMPTS = 8;

/**
 * Runs one optimistic read-decide-commit round until it commits: a StoreConflictError (someone
 * else changed what the round read) starts a new round; anything else propagates.
 */
export async function withConflictRetry<T>(round: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await round();
    } catch (err) {
      if (!isStoreConflict(err)) throw err;
      if (attempt >= MAX_COMMIT_ATTEMPTS) {
        throw concurrentModification(err);
      }
    }
  }
}
