import type { Logger } from "../lib/logging.ts";
import type { HostLease } from "../lib/registry/registry.ts";

export interface LeaseKeeper {
  /** The live lease, waiting while the host (re-)registers. */
  current(): Promise<HostLease>;
  /** Registers the host for the first time (failures are the caller's). */
  start(): Promise<HostLease>;
  /** Stops re-registering (the edge is stopping); returns the lease held now, if any. */
  stop(): HostLease | undefined;
}

export interface LeaseKeeperOptions {
  readonly register: () => Promise<HostLease>;
  /** The lease was lost (expired without revoke): the host must close its streams. */
  readonly onLost: () => void;
  readonly logger: Logger;
}

/**
 * Holds this host's registry lease. A lease that is lost (it expired: the process stalled or was
 * cut off from the registry longer than its TTL) took the host record and every device route with
 * it; the keeper then has the streams closed (their devices reconnect and re-register) and
 * registers the host again under a new lease, retrying with backoff. Streams opening meanwhile
 * wait for the new lease.
 */
export function createLeaseKeeper(options: LeaseKeeperOptions): LeaseKeeper {
  let held: HostLease | undefined;
  let stopped = false;
  let resolveNext: (lease: HostLease) => void = () => {};
  let next = new Promise<HostLease>((resolve) => {
    resolveNext = resolve;
  });

  const adopt = (lease: HostLease) => {
    held = lease;
    resolveNext(lease);
    void lease.lost.then(() => {
      if (stopped || held !== lease) return;
      options.logger.error(
        { host_id: lease.hostId },
        "the edge lost its registry lease: closing streams, registering again",
      );
      held = undefined;
      next = new Promise<HostLease>((resolve) => {
        resolveNext = resolve;
      });
      options.onLost();
      void reRegister();
    });
  };

  const reRegister = async () => {
    for (let delay = 250; !stopped; delay = Math.min(delay * 2, 5_000)) {
      try {
        const lease = await options.register();
        if (stopped) {
          await lease.revoke().catch(() => {});
          return;
        }
        adopt(lease);
        options.logger.info({ host_id: lease.hostId }, "the edge registered again");
        return;
      } catch (err) {
        options.logger.warn({ err, retry_in_ms: delay }, "could not register the edge again");
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  };

  return {
    current: () => next,
    async start() {
      const lease = await options.register();
      adopt(lease);
      return lease;
    },
    stop() {
      stopped = true;
      return held;
    },
  };
}
