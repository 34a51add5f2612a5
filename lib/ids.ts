import { v5, v7 } from "uuid";

/**
 * Namespace of direct (1:1) conversation ids. It is itself derived, so any implementation can
 * recompute it: UUIDv5(NAMESPACE_URL, "https://parley.dev/ns/direct-conversation").
 * Changing it would give every existing 1:1 conversation a new id: never change it.
 */
export const DIRECT_CONVERSATION_NAMESPACE = "d0d4a5da-31a7-5f03-8f7e-d2100c32cfb3";

/** A new message id: UUIDv7, so ids sort by creation time (monotonic within one process). */
export function newMessageId(): string {
  return v7();
}

/** A new group (and group conversation) id: UUIDv7. */
export function newGroupId(): string {
  return v7();
}

/**
 * The id of the 1:1 conversation between two users, the same whoever starts it and on every
 * server, so two devices that message each other at once land in one conversation without a
 * lookup. It is UUIDv5 over `direct:<lower>:<higher>` in DIRECT_CONVERSATION_NAMESPACE, the pair
 * ordered by UTF-16 code unit (bytewise for the ASCII user ids allow). ':' cannot appear in a
 * user id, so distinct pairs never share a name.
 */
export function directConversationId(userA: string, userB: string): string {
  const [lower, higher] = userA < userB ? [userA, userB] : [userB, userA];
  return v5(`direct:${lower}:${higher}`, DIRECT_CONVERSATION_NAMESPACE);
}
