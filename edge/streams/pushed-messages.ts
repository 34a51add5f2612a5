import type { Link, SpanContext } from "@opentelemetry/api";

/** A device as the ack and push paths name it (a DeviceAddress, or any object with its ids). */
type DeviceAddress = { readonly userId: string; readonly deviceId: string };

/** What the ack path needs of a pushed message. */
export interface PushedMessage {
  readonly conversationId: string;
  readonly messageId: string;
  readonly seq: bigint;
  /** When the sender accepted it (ms since the epoch), if the message says. */
  readonly acceptedAtMs: number | undefined;
}

/** What an acknowledgement covered among the remembered messages. */
export interface Acknowledged {
  /** Links to the sampled traces of the covered messages, at most `maxLinks`. */
  readonly links: Link[];
  /** Acceptance times (ms) of every covered message: the ack latency metric. */
  readonly acceptedAtMs: number[];
}

/**
 * The messages this edge pushed, until their device acknowledges them. An ack starts its own
 * trace (it is the device's action, maybe much later) with a span link to the trace of each
 * message it acknowledges, and so do the receipts it causes; and the time from each message's
 * acceptance to its first ack is measured (`parley.message.ack.latency`). Only sampled traces are
 * linked (a link to a trace nobody recorded helps no one). Memory is bounded per device and
 * conversation (the newest `perConversation` messages), in conversations (`conversations`) and in
 * messages (`maxMessages`), the least recently pushed dropped first. A message replayed through
 * Sync, or pushed by another edge, is not remembered: it gets no link and no latency.
 */
export interface PushedMessages {
  /** A message was pushed to `device` under the trace `traceparent` (W3C). */
  remember(device: DeviceAddress, message: PushedMessage, traceparent: string): void;
  /**
   * What an acknowledgement by `device` covers: the remembered messages by id, or every one up to
   * `upToSeq`. They are forgotten, so a later ack (READ after DELIVERED) covers nothing again.
   */
  take(
    device: DeviceAddress,
    conversationId: string,
    target: { readonly messageIds: readonly string[] } | { readonly upToSeq: bigint },
  ): Acknowledged;
}

interface Remembered {
  readonly messageId: string;
  readonly seq: bigint;
  readonly context: SpanContext | undefined;
  readonly acceptedAtMs: number | undefined;
}

export interface PushedMessagesOptions {
  readonly perConversation?: number;
  readonly conversations?: number;
  readonly maxMessages?: number;
  readonly maxLinks?: number;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The span context of a sampled W3C traceparent, or undefined (malformed, empty, not sampled). */
export function sampledSpanContext(traceparent: string): SpanContext | undefined {
  // Most pushes are not traced or not sampled: the flags' low bit first, before any regex.
  if (traceparent.length !== 55 || (Number.parseInt(traceparent.slice(53), 16) & 1) === 0) return undefined;
  const match = TRACEPARENT.exec(traceparent);
  if (match === null) return undefined;
  const [, traceId = "", spanId = "", flags = "00"] = match;
  const traceFlags = Number.parseInt(flags, 16);
  if ((traceFlags & 1) === 0 || /^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, traceFlags, isRemote: true };
}

const NOTHING: Acknowledged = Object.freeze({ links: [], acceptedAtMs: [] }) as Acknowledged;

export function createPushedMessages(options: PushedMessagesOptions = {}): PushedMessages {
  const perConversation = options.perConversation ?? 64;
  const conversations = options.conversations ?? 10_000;
  const maxMessages = options.maxMessages ?? 100_000;
  const maxLinks = options.maxLinks ?? 32;
  // Per device and conversation, the remembered messages by id, oldest pushed first: remembering
  // one is O(1) however many wait for their ack (a device that does not ack keeps its 64).
  const byConversation = new Map<string, Map<string, Remembered>>();
  let total = 0;
  const keyOf = (device: DeviceAddress, conversationId: string) =>
    `${device.userId}/${device.deviceId}/${conversationId}`;

  return {
    remember(device, message, traceparent) {
      const context = sampledSpanContext(traceparent);
      if (context === undefined && message.acceptedAtMs === undefined) return;
      const key = keyOf(device, message.conversationId);
      const list = byConversation.get(key) ?? new Map<string, Remembered>();
      // Most recently pushed last: Map order is the eviction order.
      byConversation.delete(key);
      byConversation.set(key, list);
      if (list.has(message.messageId)) return;
      list.set(message.messageId, {
        messageId: message.messageId,
        seq: message.seq,
        context,
        acceptedAtMs: message.acceptedAtMs,
      });
      total++;
      if (list.size > perConversation) {
        const oldest = list.keys().next();
        if (oldest.done !== true) list.delete(oldest.value);
        total--;
      }
      while (byConversation.size > conversations || total > maxMessages) {
        const oldest = byConversation.entries().next();
        if (oldest.done === true) break;
        byConversation.delete(oldest.value[0]);
        total -= oldest.value[1].size;
      }
    },

    take(device, conversationId, target) {
      const key = keyOf(device, conversationId);
      const list = byConversation.get(key);
      if (list === undefined) return NOTHING;
      const covered =
        "upToSeq" in target
          ? (r: Remembered) => r.seq <= target.upToSeq
          : (r: Remembered) => target.messageIds.includes(r.messageId);
      const taken: Remembered[] = [];
      for (const r of list.values()) {
        if (covered(r)) taken.push(r);
      }
      if (taken.length === 0) return NOTHING;
      for (const r of taken) list.delete(r.messageId);
      total -= taken.length;
      if (list.size === 0) byConversation.delete(key);
      const links: Link[] = [];
      const acceptedAtMs: number[] = [];
      for (const r of taken) {
        if (r.acceptedAtMs !== undefined) acceptedAtMs.push(r.acceptedAtMs);
        if (r.context !== undefined) {
          links.push({
            context: r.context,
            attributes: { "parley.message_id": r.messageId, "parley.link.kind": "acknowledged_message" },
          });
        }
      }
      return { links: links.slice(-maxLinks), acceptedAtMs };
    },
  };
}
