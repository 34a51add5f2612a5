import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { fromBinary, isMessage } from "@bufbuild/protobuf";
import type { Attributes } from "@opentelemetry/api";
import {
  ContactChangedSchema,
  GroupRenamedSchema,
  MembershipChangedSchema,
} from "../../../../gen/parley/events/v1/connection_events_pb.ts";
import { KeyChangedSchema, PrekeysLowSchema } from "../../../../gen/parley/events/v1/key_events_pb.ts";
import {
  MessageStoredSchema,
  ResendRequestedSchema,
} from "../../../../gen/parley/events/v1/message_events_pb.ts";
import {
  PresenceChangedSchema,
  TypingChangedSchema,
} from "../../../../gen/parley/events/v1/presence_events_pb.ts";
import { ReceiptRecordedSchema } from "../../../../gen/parley/events/v1/receipt_events_pb.ts";
import type { Broker, BrokerMessage, Subscription } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import { withConsumerSpan } from "../../../../lib/broker/tracing.ts";
import type { Logger } from "../../../../lib/logging.ts";
import { FORCE_TRACE_ATTRIBUTE } from "../../../../lib/telemetry.ts";
import type { FanOut, FanOutResult } from "../../domain/fan-out.ts";

/** The durable subscription delivery's workers share on every topic they consume. */
export const DELIVERY_SUBSCRIPTION = "delivery";

export interface EventConsumerOptions {
  readonly broker: Broker;
  readonly fanOut: FanOut;
  readonly logger: Logger;
  /** Delay before a failed event comes back (broker default when unset). */
  readonly redeliveryDelayMs?: number;
  /**
   * Runs after an event's pushes and checkpoints, right before the handler returns (and the
   * broker acknowledges the event); throwing makes the broker deliver it again. For fault tests: a
   * worker that dies after pushing and before acknowledging.
   */
  readonly beforeAck?: (message: BrokerMessage, result: FanOutResult) => void | Promise<void>;
}

type Consumer = {
  readonly topic: string;
  readonly schema: DescMessage;
  readonly handle: (event: never) => Promise<FanOutResult>;
};

function consumer<S extends DescMessage>(
  topic: string,
  schema: S,
  handle: (event: MessageShape<S>) => Promise<FanOutResult>,
): Consumer {
  return { topic, schema, handle: handle as (event: never) => Promise<FanOutResult> };
}

/**
 * Subscribes delivery to its topics: the durable ones (Key_Shared, subscription "delivery", so
 * workers share the work and each key keeps its order) and the non-persistent presence and typing
 * topics (followed). An event that cannot be decoded is logged and acknowledged: one bad event must
 * not hold its key. A fan-out that throws (the checkpoint store failed) or that could not reach a
 * device's host is redelivered.
 */
export async function startEventConsumers(options: EventConsumerOptions): Promise<Subscription[]> {
  const { broker, fanOut, logger } = options;
  const durable = [
    consumer(Topics.deliveries, MessageStoredSchema, fanOut.messageStored),
    consumer(Topics.receipts, ReceiptRecordedSchema, fanOut.receiptRecorded),
    consumer(Topics.keys, KeyChangedSchema, fanOut.keyChanged),
    consumer(Topics.prekeys, PrekeysLowSchema, fanOut.prekeysLow),
    consumer(Topics.contacts, ContactChangedSchema, fanOut.contactChanged),
    consumer(Topics.memberships, MembershipChangedSchema, fanOut.membershipChanged),
    consumer(Topics.groups, GroupRenamedSchema, fanOut.groupRenamed),
    consumer(Topics.resends, ResendRequestedSchema, fanOut.resendRequested),
  ];
  const ephemeral = [
    consumer(Topics.presence, PresenceChangedSchema, fanOut.presenceChanged),
    consumer(Topics.typing, TypingChangedSchema, fanOut.typingChanged),
  ];

  const decode = (c: Consumer, message: BrokerMessage): unknown => {
    if (message.payload.length === 0) return undefined; // a tombstone on a compacted topic
    try {
      return fromBinary(c.schema, message.payload);
    } catch (err) {
      logger.error({ err, topic: message.topic, id: message.id }, "undecodable event skipped");
      return undefined;
    }
  };

  const logResult = (message: BrokerMessage, result: FanOutResult) => {
    logger.debug({ topic: message.topic, id: message.id, key: message.key, ...result }, "event fanned out");
  };

  const subscriptions: Subscription[] = [];
  try {
    for (const c of durable) {
      subscriptions.push(
        await broker.subscribe(
          c.topic,
          {
            subscription: DELIVERY_SUBSCRIPTION,
            mode: "key_shared",
            // An unreachable host keeps its event coming back until the host's lease expires
            // (PARLEY_EDGE_LEASE_TTL, 10 s by default); the broker's default of 10 redeliveries at
            // 1 s could dead-letter it just before. Two minutes of retries covers any sane TTL.
            maxRedeliveries: 120,
            ...(options.redeliveryDelayMs === undefined
              ? {}
              : { redeliveryDelayMs: options.redeliveryDelayMs }),
          },
          (message) =>
            // Continues the producer's trace: the PushBatch calls of the fan-out are its children.
            withConsumerSpan(message, DELIVERY_SUBSCRIPTION, async (span) => {
              const event = decode(c, message);
              if (event === undefined) return;
              span.setAttributes(eventAttributes(event));
              const result = await c.handle(event as never);
              span.setAttributes(resultAttributes(result));
              logResult(message, result);
              // A connected device whose host could not be reached would otherwise wait for its
              // next reconnect: have the broker deliver the event again (the checkpoints skip the
              // batches already pushed). Once the host's lease expires its routes vanish, and the
              // devices count as offline (they Sync when they come back).
              if ("unreachable" in result && result.unreachable > 0) {
                throw new Error(
                  `${result.unreachable} devices on unreachable edge hosts; retrying the event`,
                );
              }
              await options.beforeAck?.(message, result);
            }),
        ),
      );
    }
    for (const c of ephemeral) {
      subscriptions.push(
        await broker.follow(c.topic, {}, (message) =>
          withConsumerSpan(message, DELIVERY_SUBSCRIPTION, async (span) => {
            const event = decode(c, message);
            if (event === undefined) return;
            const result = await c.handle(event as never);
            span.setAttributes(resultAttributes(result));
            logResult(message, result);
          }),
        ),
      );
    }
  } catch (err) {
    for (const subscription of subscriptions) await subscription.close();
    throw err;
  }
  return subscriptions;
}

/**
 * Ids of a message event for its consumer span (never its ciphertext): MessageStored names the
 * message, its conversation and part; ReceiptRecorded its conversation and the receipt's message ids.
 */
function eventAttributes(event: unknown): Attributes {
  if (isMessage(event, MessageStoredSchema)) {
    return {
      "parley.message_id": event.message?.messageId ?? "",
      "parley.conversation_id": event.message?.conversationId ?? "",
      "parley.seq": Number(event.message?.seq ?? 0n),
      "parley.part": event.part,
      "parley.device.count": event.targets.length,
      ...(event.forceTrace ? { [FORCE_TRACE_ATTRIBUTE]: true } : {}),
    };
  }
  if (isMessage(event, ReceiptRecordedSchema)) {
    return {
      "parley.conversation_id": event.receipt?.conversationId ?? "",
      "parley.receipt.up_to_seq": Number(event.receipt?.upToSeq ?? 0n),
      ...(event.receipt === undefined || event.receipt.messageIds.length === 0
        ? {}
        : { "parley.message_ids": event.receipt.messageIds.slice(0, 32) }),
    };
  }
  return {};
}

function resultAttributes(result: FanOutResult): Attributes {
  const attributes: Attributes = {};
  for (const [key, value] of Object.entries(result)) {
    if (typeof value === "number" || typeof value === "string") attributes[`parley.fan_out.${key}`] = value;
  }
  return attributes;
}
