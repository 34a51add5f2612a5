import type { Attributes, Context, Span } from "@opentelemetry/api";
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { BrokerMessage } from "./broker.ts";

/**
 * Broker hops as spans, after the OpenTelemetry messaging conventions: a PRODUCER span per publish
 * that puts its own `traceparent` into the message properties, and a CONSUMER span per handled
 * message whose parent is that `traceparent`, so one trace runs through every topic a message
 * crosses. Payloads (ciphertext) are never attributes: only topics, keys, ids.
 */

const tracer = trace.getTracer("parley.broker");

/** What Pulsar's clients report as `messaging.system`; the embedded broker stands in for it. */
const MESSAGING_SYSTEM = "pulsar";

export interface ProducerSpanOptions {
  /**
   * The context to continue (default: the active one). The outbox relay passes the context of the
   * request that wrote the event, read from the event's stored `traceparent`.
   */
  readonly parent?: Context;
  /** Ids of what is published (`parley.message_id`, `parley.conversation_id`...). */
  readonly attributes?: Attributes;
}

/**
 * Runs `publish` inside a PRODUCER span `publish <topic>`. `publish` gets the W3C properties of
 * that span (`traceparent`, and `tracestate` when there is one) to send with the message (and to
 * copy into the payload's `traceparent` field); it returns the broker's answer, whose `id` becomes
 * `messaging.message.id`.
 */
export async function withProducerSpan<T extends { readonly id: string } | undefined>(
  topic: string,
  key: string,
  publish: (properties: Record<string, string>, span: Span) => Promise<T>,
  options: ProducerSpanOptions = {},
): Promise<T> {
  const parent = options.parent ?? context.active();
  const span = tracer.startSpan(
    `publish ${topic}`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.key": key,
        ...options.attributes,
      },
    },
    parent,
  );
  const ctx = trace.setSpan(parent, span);
  const properties: Record<string, string> = {};
  propagation.inject(ctx, properties);
  try {
    const result = await context.with(ctx, () => publish(properties, span));
    if (result !== undefined) span.setAttribute("messaging.message.id", result.id);
    return result;
  } catch (err) {
    failSpan(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/**
 * The context a message's `traceparent` property names, on top of the ROOT context: never the
 * context that happens to be active where the broker calls the handler (in the embedded broker
 * that may be the publisher's own, which would hide a missing `traceparent`).
 */
export function messageContext(properties: Readonly<Record<string, string>>): Context {
  return propagation.extract(ROOT_CONTEXT, properties);
}

/**
 * Runs `handle` inside a CONSUMER span `process <topic>` whose parent is the message's
 * `traceparent` (a new trace when it has none), so the handler's calls, logs and the events it
 * writes continue the producer's trace. A handler that throws marks the span as an error.
 */
export async function withConsumerSpan<T>(
  message: BrokerMessage,
  subscription: string,
  handle: (span: Span) => Promise<T>,
  attributes: Attributes = {},
): Promise<T> {
  const parent = messageContext(message.properties);
  const span = tracer.startSpan(
    `process ${message.topic}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": message.topic,
        "messaging.destination.subscription.name": subscription,
        "messaging.message.id": message.id,
        "messaging.message.key": message.key,
        ...(message.redeliveryCount > 0
          ? { "messaging.pulsar.redelivery_count": message.redeliveryCount }
          : {}),
        ...attributes,
      },
    },
    parent,
  );
  try {
    return await context.with(trace.setSpan(parent, span), () => handle(span));
  } catch (err) {
    failSpan(span, err);
    throw err;
  } finally {
    span.end();
  }
}

function failSpan(span: Span, err: unknown): void {
  if (err instanceof Error) span.recordException(err);
  span.setStatus({ code: SpanStatusCode.ERROR, ...(err instanceof Error ? { message: err.message } : {}) });
}
