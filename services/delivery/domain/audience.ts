import type { ConversationDirectory } from "./ports.ts";

/** Whether either user blocks the other: presence and typing never cross a block. */
export function blockedEitherWay(conversations: ConversationDirectory, a: string, b: string): boolean {
  return conversations.blocks(a, b) || conversations.blocks(b, a);
}

/**
 * A user's accepted contacts: the other members of their live direct conversations (connection
 * publishes a direct conversation when a connection is accepted and deletes it when the connection
 * is removed or blocked), with blocks either way excluded for good measure.
 */
export function acceptedContacts(conversations: ConversationDirectory, userId: string): Set<string> {
  return new Set(conversations.contactsOf(userId).filter((c) => !blockedEitherWay(conversations, userId, c)));
}

/** Everyone who shares a live conversation (direct or group) with the user, the user excluded. */
export function fellowMembers(conversations: ConversationDirectory, userId: string): Set<string> {
  const users = new Set<string>();
  for (const conversation of conversations.conversationsOf(userId)) {
    for (const member of conversation.memberUserIds) {
      if (member !== userId) users.add(member);
    }
  }
  return users;
}

/** The members of a live conversation, or undefined when it is unknown or deleted. */
export function liveMembers(
  conversations: ConversationDirectory,
  conversationId: string,
): readonly string[] | undefined {
  const conversation = conversations.conversation(conversationId);
  if (conversation === undefined || conversation.deleted) return undefined;
  return conversation.memberUserIds;
}
