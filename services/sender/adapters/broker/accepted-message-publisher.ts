import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { context, propagation } from "@opentelemetry/api";
import { MessageAcceptedSchema } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import type { Broker } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import type { AcceptedMessagePublisher } from "../../domain/ports.ts";

/** Publishes accepted messages to `chat.messages`, keyed by conversation so history keeps their order. */
export function createAcceptedMessagePublisher(broker: Broker): AcceptedMessagePublisher {
  return {
    async publish(message) {
      const carrier: Record<string, string> = {};
      propagation.inject(context.active(), carrier);
      const traceparent = carrier.traceparent ?? "";
      const event = create(MessageAcceptedSchema, {
        messageId: message.messageId,
        conversationId: message.conversationId,
        sender: message.sender,
        clientMessageId: message.clientMessageId,
        envelope: message.envelope,
        acceptedAt: timestampFromDate(message.acceptedAt),
        recipientDevices: message.recipientDevices.map((d) => ({ userId: d.userId, deviceId: d.deviceId })),
        membershipVersion: message.membershipVersion,
        traceparent,
        forceTrace: message.forceTrace,
      });
      await broker.publish(Topics.messages, {
        key: message.conversationId,
        payload: toBinary(MessageAcceptedSchema, event),
        properties: traceparent === "" ? {} : { traceparent },
      });
    },
  };
}
