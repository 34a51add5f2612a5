import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { TypingChangedSchema } from "../../../gen/parley/events/v1/presence_events_pb.ts";
import { notFound, resourceExhausted } from "../../../lib/errors.ts";
import type { RateLimiter } from "../../../lib/rate-limit.ts";
import { liveMembers } from "./audience.ts";
import type { ConversationDirectory, DeviceRef, EphemeralEvents } from "./ports.ts";

/** How long a typing indicator lasts without a repeat (delivery_service.proto). */
export const TYPING_TTL_MS = 5_000;

export interface TypingOptions {
  readonly conversations: ConversationDirectory;
  readonly events: EphemeralEvents;
  /** Per device (`user/device`), one token per update. */
  readonly limiter: RateLimiter;
  readonly now?: () => number;
}

/**
 * SetTyping: checks membership from the local view (a non-member gets the same NOT_FOUND as for a
 * conversation that does not exist) and the per-device rate, then publishes TypingChanged on the
 * non-persistent topic. Returns when the indicator expires (undefined when typing stopped).
 */
export function createTyping(options: TypingOptions) {
  const { conversations, events, limiter } = options;
  const now = options.now ?? Date.now;
  return async function setTyping(
    device: DeviceRef,
    conversationId: string,
    typing: boolean,
  ): Promise<number | undefined> {
    const members = liveMembers(conversations, conversationId);
    if (members === undefined || !members.includes(device.userId)) {
      throw notFound("CONVERSATION_NOT_FOUND", "conversation not found");
    }
    const limit = await limiter.take(`${device.userId}/${device.deviceId}`);
    if (!limit.allowed) {
      throw resourceExhausted("RATE_LIMITED", "too many typing updates; drop them", {
        retryDelayMs: limit.retryAfterMs,
      });
    }
    const t = now();
    const expiresAt = typing ? t + TYPING_TTL_MS : undefined;
    events.typingChanged(
      create(TypingChangedSchema, {
        conversationId,
        device: { userId: device.userId, deviceId: device.deviceId },
        typing,
        ...(expiresAt === undefined ? {} : { expiresAt: timestampFromMs(expiresAt) }),
        changedAt: timestampFromMs(t),
      }),
    );
    return expiresAt;
  };
}
