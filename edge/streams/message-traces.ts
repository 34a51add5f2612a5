import type { Link, SpanContext } from "@opentelemetry/api";

/** A device as the ack and push paths name it (a DeviceAddress, or any object with its ids). */
type DeviceAddress = { readonly userId: string; readonly deviceId: string };

/**
 * The traces of messages this edge pushed, so a device's acknowledgement can link to them: an ack
 * starts its own trace (it is the device's action, maybe much later), with a span link to the trace
 * of each message it acknowledges, and so do the receipts it causes. Only sampled traces are kept
 * (a link to a trace nobody recorded helps no one); memory is bounded per device and conversation
 * (the newest `perConversation` messages) and overall (`conversations`, the least recently pushed
 * dropped first). A message replayed through Sync, or pushed by another edge, gets no link.
 */
export interface MessageTraces {
  /** A message was pushed to `device` under the trace `traceparent` (W3C). */
  remember(
    device: DeviceAddress,
    message: { readonly conversationId: string; readonly messageId: string; readonly seq: bigint },
    traceparent: string,
  ): void;
  /**
   * The links of an acknowledgement by `device`: to the remembered messages it covers (by id, or
   * every one up to `upToSeq`), at most `maxLinks`, which are forgotten.
   */
  take(
    device: DeviceAddress,
    conversationId: string,
    target: { readonly messageIds: readonly string[] } | { readonly upToSeq: bigint },
  ): Link[];
}

interface Remembered {
  readonly messageId: string;
  readonly seq: bigint;
  readonly context: SpanContext;
}

export interface MessageTracesOptions {
  readonly perConversation?: number;
  readonly conversations?: number;
  readonly maxLinks?: number;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The span context of a sampled W3C traceparent, or undefined (malformed, empty, not sampled). */
export function sampledSpanContext(traceparent: string): SpanContext | undefined {
  const match = TRACEPARENT.exec(traceparent);
  if (match === null) return undefined;
  const [, traceId = "", spanId = "", flags = "00"] = match;
  const traceFlags = Number.parseInt(flags, 16);
  if ((traceFlags & 1) === 0 || /^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, traceFlags, isRemote: true };
}

export function createMessageTraces(options: MessageTracesOptions = {}): MessageTraces {
  const perConversation = options.perConversation ?? 64;
  const conversations = options.conversations ?? 10_000;
  const maxLinks = options.maxLinks ?? 32;
  const byConversation = new Map<string, Remembered[]>();
  const keyOf = (device: DeviceAddress, conversationId: string) =>
    `${device.userId}/${device.deviceId}/${conversationId}`;

  return {
    remember(device, message, traceparent) {
      const context = sampledSpanContext(traceparent);
      if (context === undefined) return;
      const key = keyOf(device, message.conversationId);
      const list = byConversation.get(key) ?? [];
      // Most recently pushed last: Map order is the eviction order.
      byConversation.delete(key);
      byConversation.set(key, list);
      if (list.some((r) => r.messageId === message.messageId)) return;
      list.push({ messageId: message.messageId, seq: message.seq, context });
      if (list.length > perConversation) list.shift();
      while (byConversation.size > conversations) {
        const oldest = byConversation.keys().next();
        if (oldest.done === true) break;
        byConversation.delete(oldest.value);
      }
    },

    take(device, conversationId, target) {
      const key = keyOf(device, conversationId);
      const list = byConversation.get(key);
      if (list === undefined) return [];
      const covered =
        "upToSeq" in target
          ? (r: Remembered) => r.seq <= target.upToSeq
          : (r: Remembered) => target.messageIds.includes(r.messageId);
      const taken = list.filter(covered);
      const kept = list.filter((r) => !covered(r));
      if (kept.length === 0) byConversation.delete(key);
      else byConversation.set(key, kept);
      return taken.slice(-maxLinks).map((r) => ({
        context: r.context,
        attributes: { "parley.message_id": r.messageId, "parley.link.kind": "acknowledged_message" },
      }));
    },
  };
}
