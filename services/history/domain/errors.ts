import type { ParleyError } from "../../../lib/errors.ts";
import { invalidArgument, notFound, resourceExhausted } from "../../../lib/errors.ts";

/** The reasons history_service.proto documents, in one place. */
export const HistoryReasons = {
  invalidCursor: "INVALID_CURSOR",
  invalidPageToken: "INVALID_PAGE_TOKEN",
  conversationNotFound: "CONVERSATION_NOT_FOUND",
  messageNotFound: "MESSAGE_NOT_FOUND",
  rateLimited: "RATE_LIMITED",
} as const;

export function invalidCursor(why: string): ParleyError {
  return invalidArgument(HistoryReasons.invalidCursor, `invalid cursor: ${why}`);
}

/** The same answer for a conversation that does not exist and one the caller is not in. */
export function conversationNotFound(conversationId: string): ParleyError {
  return notFound(HistoryReasons.conversationNotFound, "conversation not found", {
    metadata: { conversationId },
  });
}

export function messageNotFound(messageId: string): ParleyError {
  return notFound(HistoryReasons.messageNotFound, "message not found", { metadata: { messageId } });
}

export function rateLimited(retryAfterMs: number): ParleyError {
  return resourceExhausted(HistoryReasons.rateLimited, "too many resend requests; back off", {
    retryDelayMs: retryAfterMs,
  });
}
