import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { MessageAcceptedSchema } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import type { Broker } from "../../../../lib/broker/broker.ts";
import { PayloadTooLargeError, Topics } from "../../../../lib/broker/broker.ts";
import { withProducerSpan } from "../../../../lib/broker/tracing.ts";
import { resourceExhausted, unavailable } from "../../../../lib/errors.ts";
import type { AcceptedMessagePublisher } from "../../domain/ports.ts";

/**
 * Publishes accepted messages to `chat.messages`, keyed by conversation so history keeps their order,
 * under a producer span (child of the SendMessage call) whose traceparent the event carries, in
 * its properties and in its `traceparent` field.
 *
 * A publish that fails (the broker is down or restarting) is UNAVAILABLE with a retry delay, not
 * INTERNAL: nothing was accepted, and the client retries with the same client_message_id.
 */
export function createAcceptedMessagePublisher(broker: Broker): AcceptedMessagePublisher {
  return {
    async publish(message) {
      await withProducerSpan(
        Topics.messages,
        message.conversationId,
        (properties) => {
          const event = create(MessageAcceptedSchema, {
            messageId: message.messageId,
            conversationId: message.conversationId,
            sender: message.sender,
            clientMessageId: message.clientMessageId,
            envelope: message.envelope,
            acceptedAt: timestampFromDate(message.acceptedAt),
            recipientDevices: message.recipientDevices.map((d) => ({
              userId: d.userId,
              deviceId: d.deviceId,
            })),
            membershipVersion: message.membershipVersion,
            traceparent: properties.traceparent ?? "",
            forceTrace: message.forceTrace,
          });
          return broker
            .publish(Topics.messages, {
              key: message.conversationId,
              payload: toBinary(MessageAcceptedSchema, event),
              properties,
            })
            .catch((err: unknown) => {
              // Final, unlike a broker that is away: the client must not send it again as is.
              if (err instanceof PayloadTooLargeError) {
                throw resourceExhausted(
                  "MESSAGE_TOO_LARGE",
                  "this message with its recipient devices is too large to publish; it was not accepted",
                  { cause: err },
                );
              }
              throw unavailable("BROKER_UNAVAILABLE", "the message broker is unavailable; retry", {
                retryDelayMs: 1_000,
                cause: err,
              });
            });
        },
        {
          attributes: {
            "parley.message_id": message.messageId,
            "parley.conversation_id": message.conversationId,
          },
        },
      );
    },
  };
}
