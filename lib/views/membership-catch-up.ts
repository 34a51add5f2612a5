import type { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import { unavailable } from "../errors.ts";
import type { GrpcServiceClient } from "../grpc/client.ts";
import { fromGrpcError } from "../grpc/grpc-error.ts";
import type { ConversationDirectory, ConversationMembership } from "./conversation-view.ts";

/** A service's local membership view that can wait for a version (ConversationView). */
export interface CatchingUpDirectory extends ConversationDirectory {
  /** True once the view holds the conversation at `version` or later; false after `timeoutMs`. */
  untilVersion(conversationId: string, version: bigint, timeoutMs: number): Promise<boolean>;
}

/**
 * Where membership is decided (the connection service). Asked only when a local view does not
 * know the conversation or the user as a member: a conversation created or joined a moment ago is
 * on its way to the view through the broker, and a call must not be refused meanwhile.
 */
export interface MembershipSource {
  /**
   * The conversation's membership version when `userId` is a member of it now; undefined when it
   * does not exist or they are not a member.
   */
  membershipVersion(userId: string, conversationId: string): Promise<bigint | undefined>;
}

/** How long a call waits for the view to reach the version the source answered. */
export const DEFAULT_VIEW_CATCH_UP_MS = 5_000;

/** Whether `userId` is a member of a live `conversation`. */
export function isLiveMember(conversation: ConversationMembership | undefined, userId: string): boolean {
  return conversation !== undefined && !conversation.deleted && conversation.memberUserIds.includes(userId);
}

/**
 * The conversation as the view holds it, once the view has caught up with the membership source
 * when it did not know `userId` as a member: the view lags the connection service by a broker hop,
 * so a client that acts right after creating a group, accepting a contact or being added would
 * otherwise be refused a conversation it is a member of. Without a source, or when the source
 * says no, the view's answer stands. Throws UNAVAILABLE (retryable) when the source cannot be
 * asked or the view does not catch up within `timeoutMs`.
 */
export async function membershipAfterCatchUp(
  view: CatchingUpDirectory,
  source: MembershipSource | undefined,
  userId: string,
  conversationId: string,
  options: {
    readonly timeoutMs?: number;
    /** How to retry, for the refusal's message (e.g. "retry with the same client_message_id"). */
    readonly retryHint?: string;
  } = {},
): Promise<ConversationMembership | undefined> {
  const retry = options.retryHint ?? "retry";
  const held = view.conversation(conversationId);
  if (source === undefined || isLiveMember(held, userId)) return held;
  let version: bigint | undefined;
  try {
    version = await source.membershipVersion(userId, conversationId);
  } catch (err) {
    throw unavailable(
      "MEMBERSHIP_UNAVAILABLE",
      `cannot confirm your membership of this conversation right now; ${retry}`,
      { retryDelayMs: 1_000, cause: err },
    );
  }
  if (version === undefined || (held !== undefined && held.version >= version)) return held;
  if (!(await view.untilVersion(conversationId, version, options.timeoutMs ?? DEFAULT_VIEW_CATCH_UP_MS))) {
    throw unavailable(
      "MEMBERSHIP_PROPAGATING",
      `this conversation's latest membership has not reached this service yet; ${retry}`,
      { retryDelayMs: 1_000 },
    );
  }
  return view.conversation(conversationId);
}

/**
 * The connection service's GetConversation as a membership source: it answers NOT_FOUND for a
 * conversation that does not exist and for one the user is not a member of, alike.
 */
export function connectionMembershipSource(
  connection: GrpcServiceClient<typeof ConnectionService>,
): MembershipSource {
  return {
    async membershipVersion(userId, conversationId) {
      try {
        const response = await connection.getConversation({ userId, conversationId });
        return response.conversation?.membershipVersion;
      } catch (err) {
        if (fromGrpcError(err).code === "not_found") return undefined;
        throw err;
      }
    },
  };
}
