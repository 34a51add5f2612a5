/** The ports the history domain needs besides its store (history-store.ts). */
export type { ConversationDirectory, ConversationMembership } from "../../../lib/views/conversation-view.ts";
export type {
  CatchingUpDirectory,
  MembershipSource,
} from "../../../lib/views/membership-catch-up.ts";
