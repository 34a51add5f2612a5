import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { MessageAccepted } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import { MessageAcceptedSchema } from "../../../../gen/parley/events/v1/message_events_pb.ts";
import type { Broker, BrokerMessage, Subscription } from "../../../../lib/broker/broker.ts";
import { DEAD_LETTER_PROPERTIES, deadLetterTopic, Topics } from "../../../../lib/broker/broker.ts";
import { withConsumerSpan } from "../../../../lib/broker/tracing.ts";
import { validateMessage } from "../../../../lib/grpc/validation.ts";
import type { Logger } from "../../../../lib/logging.ts";
import { currentTraceparent, FORCE_TRACE_ATTRIBUTE } from "../../../../lib/telemetry.ts";
import type { AcceptedMessage } from "../../domain/history.ts";
import type { StoreMessageResult } from "../../domain/history-store.ts";

/** The durable subscription of history on `chat.messages`: history workers share it (Key_Shared). */
export const HISTORY_SUBSCRIPTION = "history";

export interface MessageConsumerOptions {
  readonly broker: Broker;
  /** Stores one accepted message, idempotently (the domain's `ingest`). */
  readonly ingest: (message: AcceptedMessage) => Promise<StoreMessageResult>;
  readonly logger: Logger;
  /** Delay before a message whose handling failed comes back (default: the broker's, 1 s). */
  readonly redeliveryDelayMs?: number;
  readonly maxInFlight?: number;
}

/**
 * Consumes MessageAccepted from `chat.messages` (key = conversation, so one conversation's messages
 * are stored one at a time, in order). Resolving acknowledges; a failure (storage unavailable, a
 * crash before the commit) is thrown so the broker redelivers the message, and the store's dedup
 * makes that safe. An event that cannot be decoded or breaks its rules would fail forever: it goes
 * straight to the dead-letter topic instead of holding its conversation back.
 */
export async function startMessageConsumer(options: MessageConsumerOptions): Promise<Subscription> {
  const { broker, logger } = options;
  return broker.subscribe(
    Topics.messages,
    {
      subscription: HISTORY_SUBSCRIPTION,
      mode: "key_shared",
      // Every message here was already answered SENT: a storage outage must delay it, never
      // dead-letter it. (Undecodable events take their own path to the dead-letter topic below.)
      maxRedeliveries: Number.MAX_SAFE_INTEGER,
      ...(options.redeliveryDelayMs === undefined ? {} : { redeliveryDelayMs: options.redeliveryDelayMs }),
      ...(options.maxInFlight === undefined ? {} : { maxInFlight: options.maxInFlight }),
    },
    async (message) => {
      let accepted: AcceptedMessage;
      try {
        const event = fromBinary(MessageAcceptedSchema, message.payload);
        validateMessage(MessageAcceptedSchema, event);
        accepted = fromEvent(event);
      } catch (err) {
        logger.error({ err, topic: message.topic, id: message.id }, "invalid MessageAccepted dead-lettered");
        await deadLetter(broker, message);
        return;
      }
      // A consumer span continuing the sender's trace (the message's traceparent); MessageStored,
      // written in the same transaction, carries this span's traceparent on to delivery.
      await withConsumerSpan(
        message,
        HISTORY_SUBSCRIPTION,
        async (span) => {
          try {
            const result = await options.ingest({
              ...accepted,
              traceparent: currentTraceparent() || accepted.traceparent,
            });
            span.setAttribute("parley.seq", result.seq);
            span.setAttribute("parley.store.outcome", result.outcome);
            if (result.outcome === "duplicate") {
              logger.info(
                {
                  messageId: accepted.messageId,
                  storedMessageId: result.messageId,
                  by: result.by,
                  seq: result.seq,
                },
                "duplicate MessageAccepted ignored",
              );
            }
          } catch (err) {
            logger.warn(
              { err, messageId: accepted.messageId, redeliveryCount: message.redeliveryCount },
              "storing a message failed; it will be redelivered",
            );
            throw err;
          }
        },
        {
          "parley.message_id": accepted.messageId,
          "parley.conversation_id": accepted.conversationId,
          "parley.sender.user_id": accepted.sender.userId,
          "parley.sender.device_id": accepted.sender.deviceId,
          "parley.recipient_device.count": accepted.recipientDevices.length,
          ...(accepted.forceTrace ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
        },
      );
    },
  );
}

async function deadLetter(broker: Broker, message: BrokerMessage): Promise<void> {
  await broker.publish(deadLetterTopic(message.topic, HISTORY_SUBSCRIPTION), {
    key: message.key,
    payload: message.payload,
    properties: {
      ...message.properties,
      [DEAD_LETTER_PROPERTIES.realTopic]: message.topic,
      [DEAD_LETTER_PROPERTIES.originMessageId]: message.id,
    },
  });
}

/** A validated MessageAccepted as the domain takes it. */
export function fromEvent(event: MessageAccepted): AcceptedMessage {
  if (event.sender === undefined || event.envelope === undefined || event.acceptedAt === undefined) {
    throw new Error("MessageAccepted without sender, envelope or accepted_at");
  }
  const { payload } = event.envelope;
  let converted: AcceptedMessage["payload"];
  if (payload.case === "shared") {
    converted = { case: "shared", ciphertext: payload.value.ciphertext };
  } else if (payload.case === "perDevice") {
    converted = {
      case: "perDevice",
      recipients: payload.value.recipients.map((r) => ({
        userId: r.userId,
        devices: r.devices.map((d) => ({ deviceId: d.deviceId, ciphertext: d.ciphertext })),
      })),
    };
  } else {
    throw new Error("MessageAccepted without a payload");
  }
  return {
    messageId: event.messageId,
    conversationId: event.conversationId,
    sender: { userId: event.sender.userId, deviceId: event.sender.deviceId },
    clientMessageId: event.clientMessageId,
    kind: event.envelope.kind,
    payload: converted,
    acceptedAt: timestampDate(event.acceptedAt),
    recipientDevices: event.recipientDevices.map((d) => ({ userId: d.userId, deviceId: d.deviceId })),
    membershipVersion: event.membershipVersion,
    traceparent: event.traceparent,
    forceTrace: event.forceTrace,
  };
}
