import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import type { DeliveryService } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import { DeviceActivity } from "../../gen/parley/delivery/v1/delivery_service_pb.ts";
import type { GrpcServiceClient } from "../../lib/grpc/client.ts";
import { fromGrpcError } from "../../lib/grpc/grpc-error.ts";
import type { Logger } from "../../lib/logging.ts";

/** What one device's stream reports: the user is active or idle, or the stream closed. */
export type Activity = "active" | "idle" | "disconnected";

/** At most this many devices per UpdatePresence call (the contract's limit). */
const MAX_UPDATES_PER_CALL = 1000;

export interface PresenceReporter {
  /** Records the device's activity; sent with the next batch (the latest report per device wins). */
  report(device: DeviceAddress, activity: Activity): void;
  /** Sends what is pending now and resolves once every batch in flight is done. */
  flush(): Promise<void>;
}

export interface PresenceReporterOptions {
  readonly hostId: () => string;
  readonly delivery: Pick<GrpcServiceClient<typeof DeliveryService>, "updatePresence">;
  /** How long live devices count as online without another update (10 s .. 10 min). */
  readonly ttlMs: number;
  readonly logger: Logger;
}

/**
 * Reports device presence to delivery in batches: reports made in the same turn of the event loop
 * (opens, heartbeats, closes, the periodic refresh) go out together, up to 1,000 devices per
 * UpdatePresence, and one batch at a time, so an ACTIVE and a later DISCONNECTED of the same
 * device (or the reverse, when a stream is replaced) reach delivery in the order they happened.
 * Best effort, like presence itself: a failed call is logged and dropped; the next refresh repairs it.
 */
export function createPresenceReporter(options: PresenceReporterOptions): PresenceReporter {
  const ttlMs = Math.min(600_000, Math.max(10_000, options.ttlMs));
  const ttl = { seconds: BigInt(Math.floor(ttlMs / 1000)), nanos: (ttlMs % 1000) * 1_000_000 };
  let pending = new Map<string, { device: DeviceAddress; activity: Activity }>();
  let scheduled = false;
  let chain: Promise<void> = Promise.resolve();

  const send = async (batch: Array<{ device: DeviceAddress; activity: Activity }>) => {
    for (let i = 0; i < batch.length; i += MAX_UPDATES_PER_CALL) {
      const updates = batch.slice(i, i + MAX_UPDATES_PER_CALL).map((u) => ({
        device: { userId: u.device.userId, deviceId: u.device.deviceId },
        activity: toDeviceActivity(u.activity),
      }));
      try {
        await options.delivery.updatePresence({ hostId: options.hostId(), updates, ttl });
      } catch (err) {
        const parley = fromGrpcError(err);
        options.logger.warn(
          { code: parley.code, reason: parley.reason, devices: updates.length },
          "presence update failed; the next refresh repeats it",
        );
      }
    }
  };

  const flushNow = () => {
    scheduled = false;
    if (pending.size === 0) return chain;
    const batch = [...pending.values()];
    pending = new Map();
    chain = chain.then(() => send(batch));
    return chain;
  };

  return {
    report(device, activity) {
      pending.set(`${device.userId}/${device.deviceId}`, { device, activity });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushNow);
      }
    },
    flush() {
      return flushNow();
    },
  };
}

function toDeviceActivity(activity: Activity): DeviceActivity {
  switch (activity) {
    case "active":
      return DeviceActivity.ACTIVE;
    case "idle":
      return DeviceActivity.IDLE;
    case "disconnected":
      return DeviceActivity.DISCONNECTED;
  }
}
