/** The ports the history domain needs besides its store (history-store.ts). */
export type { ConversationDirectory, ConversationMembership } from "../../../lib/views/conversation-view.ts";

/** A per-key rate limit (RequestResend per device): in memory embedded, Redis in the cluster. */
export interface RateLimiter {
  take(key: string): { readonly allowed: true } | { readonly allowed: false; readonly retryAfterMs: number };
}
