import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { KeyChanged } from "../../../../gen/parley/events/v1/key_events_pb.ts";
import { KeyChangedSchema, KeyChangeKind } from "../../../../gen/parley/events/v1/key_events_pb.ts";
import type { Broker, Subscription } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import { validateMessage } from "../../../../lib/grpc/validation.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type { DeviceRef } from "../../domain/model.ts";
import { HISTORY_SUBSCRIPTION } from "./message-consumer.ts";

export interface KeyConsumerOptions {
  readonly broker: Broker;
  /** Drops a removed device's inbox (the domain's `deviceRemoved`); idempotent. */
  readonly deviceRemoved: (device: DeviceRef, removedAt: Date) => Promise<number>;
  readonly logger: Logger;
}

/**
 * Consumes KeyChanged from `chat.keys` (durable subscription `history`, Key_Shared by user) and
 * acts on DEVICE_REMOVED only: the removed device's inbox is dropped. Other kinds are acknowledged
 * untouched. A failure is thrown, so the broker redelivers (dropping again is harmless); an event
 * that does not decode or breaks its rules is logged and skipped, since it never will.
 */
export async function startKeyConsumer(options: KeyConsumerOptions): Promise<Subscription> {
  const { logger } = options;
  return options.broker.subscribe(
    Topics.keys,
    { subscription: HISTORY_SUBSCRIPTION, mode: "key_shared" },
    async (message) => {
      let event: KeyChanged;
      try {
        event = fromBinary(KeyChangedSchema, message.payload);
        validateMessage(KeyChangedSchema, event);
      } catch (err) {
        logger.error({ err, topic: message.topic, id: message.id }, "invalid KeyChanged skipped");
        return;
      }
      if (event.kind !== KeyChangeKind.DEVICE_REMOVED) return;
      const { device, effectiveAt } = event;
      if (device === undefined || effectiveAt === undefined) return;
      const dropped = await options.deviceRemoved(
        { userId: device.userId, deviceId: device.deviceId },
        timestampDate(effectiveAt),
      );
      logger.info(
        { user_id: device.userId, device_id: device.deviceId, dropped },
        "device removed: inbox dropped",
      );
    },
  );
}
