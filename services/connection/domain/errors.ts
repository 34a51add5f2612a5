import type { ParleyError } from "../../../lib/errors.ts";
import {
  aborted,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  permissionDenied,
  resourceExhausted,
} from "../../../lib/errors.ts";

/**
 * Every ErrorInfo reason the connection service sends. The proto names some (USER_BLOCKED,
 * NOT_A_CONNECTION, GROUP_FULL, NOT_A_GROUP, OWNER_MUST_TRANSFER); the others follow the names
 * history uses for the same situations (CONVERSATION_NOT_FOUND, INVALID_PAGE_TOKEN, RATE_LIMITED).
 */
export const Reason = {
  /** NOT_FOUND: the user does not exist, has blocked the caller, or their profile is not visible. */
  userNotFound: "USER_NOT_FOUND",
  /** NOT_FOUND: no pending incoming request from that user (Accept, Reject). */
  requestNotFound: "CONNECTION_REQUEST_NOT_FOUND",
  /** NOT_FOUND: no connection with that user (DeleteConnection). */
  connectionNotFound: "CONNECTION_NOT_FOUND",
  /** NOT_FOUND: the caller has not blocked that user (UnblockUser). */
  blockNotFound: "BLOCK_NOT_FOUND",
  /** NOT_FOUND: the conversation does not exist or the caller is not a member. */
  conversationNotFound: "CONVERSATION_NOT_FOUND",
  /** NOT_FOUND: the target user is not a member (SetMemberRole). */
  memberNotFound: "MEMBER_NOT_FOUND",
  /** NOT_FOUND: some users are not ACCEPTED connections of the caller (metadata userIds). */
  notAConnection: "NOT_A_CONNECTION",
  /** INVALID_ARGUMENT: asking oneself to connect. */
  selfConnection: "SELF_CONNECTION",
  /** INVALID_ARGUMENT: blocking oneself. */
  selfBlock: "SELF_BLOCK",
  /** INVALID_ARGUMENT: a page token that is malformed, expired or from another request. */
  invalidPageToken: "INVALID_PAGE_TOKEN",
  /** ALREADY_EXISTS: the pair is already connected. */
  alreadyConnected: "ALREADY_CONNECTED",
  /** ALREADY_EXISTS: the CreateGroup request id was used for a different request. */
  requestIdReused: "REQUEST_ID_REUSED",
  /** FAILED_PRECONDITION: the caller blocked that user. */
  userBlocked: "USER_BLOCKED",
  /** FAILED_PRECONDITION: the group would exceed 1,000 members. */
  groupFull: "GROUP_FULL",
  /** FAILED_PRECONDITION: a group-only change on a direct conversation. */
  notAGroup: "NOT_A_GROUP",
  /** FAILED_PRECONDITION: the owner leaves while others remain. */
  ownerMustTransfer: "OWNER_MUST_TRANSFER",
  /** PERMISSION_DENIED: the caller's role does not allow the change. */
  roleNotAllowed: "ROLE_NOT_ALLOWED",
  /** ABORTED: membership changed between pages of ListConversationMembers. */
  membershipChanged: "MEMBERSHIP_CHANGED",
  /** RESOURCE_EXHAUSTED: too many new connection requests. */
  rateLimited: "RATE_LIMITED",
  /** ABORTED: the change kept losing races with concurrent changes; retry. */
  concurrentModification: "CONCURRENT_MODIFICATION",
} as const;

/** At most this many user ids are listed in a NOT_A_CONNECTION error (metadata travels in a header). */
export const MAX_IDS_IN_ERROR = 20;

// One message for "does not exist" and "blocked you": the two must be indistinguishable.
export const userNotFound = (): ParleyError => notFound(Reason.userNotFound, "user not found");

export const conversationNotFound = (): ParleyError =>
  notFound(Reason.conversationNotFound, "conversation not found");

export const requestNotFound = (): ParleyError =>
  notFound(Reason.requestNotFound, "no pending connection request from that user");

export const connectionNotFound = (): ParleyError =>
  notFound(Reason.connectionNotFound, "no connection with that user");

export const blockNotFound = (): ParleyError => notFound(Reason.blockNotFound, "that user is not blocked");

export const memberNotFound = (): ParleyError =>
  notFound(Reason.memberNotFound, "that user is not a member of the conversation");

export function notAConnection(userIds: readonly string[]): ParleyError {
  const listed = userIds.slice(0, MAX_IDS_IN_ERROR);
  return notFound(Reason.notAConnection, "some users are not accepted connections of the caller", {
    metadata: {
      userIds: listed.join(","),
      userCount: String(userIds.length),
      ...(listed.length < userIds.length ? { truncated: "true" } : {}),
    },
  });
}

export const selfConnection = (): ParleyError =>
  invalidArgument(Reason.selfConnection, "cannot ask oneself to connect");

export const selfBlock = (): ParleyError => invalidArgument(Reason.selfBlock, "cannot block oneself");

export const alreadyConnected = (): ParleyError =>
  alreadyExists(Reason.alreadyConnected, "already connected with that user");

export const requestIdReused = (): ParleyError =>
  alreadyExists(Reason.requestIdReused, "request_id was already used for a different request");

export const userBlocked = (): ParleyError =>
  failedPrecondition(Reason.userBlocked, "you blocked that user: unblock them first");

export function groupFull(memberCount: number, adding: number, max: number): ParleyError {
  return failedPrecondition(Reason.groupFull, `a group has at most ${max} members`, {
    metadata: { maxMembers: String(max), memberCount: String(memberCount), adding: String(adding) },
  });
}

export const notAGroup = (): ParleyError =>
  failedPrecondition(Reason.notAGroup, "a direct conversation has no such operation");

export const ownerMustTransfer = (): ParleyError =>
  failedPrecondition(
    Reason.ownerMustTransfer,
    "the owner can leave only as the last member: make another member OWNER first",
  );

export const roleNotAllowed = (what: string): ParleyError =>
  permissionDenied(Reason.roleNotAllowed, `your role does not allow ${what}`);

export const membershipChanged = (): ParleyError =>
  aborted(Reason.membershipChanged, "membership changed since the first page: list again from the start");

export const rateLimited = (retryDelayMs: number): ParleyError =>
  resourceExhausted(Reason.rateLimited, "too many connection requests: try again later", { retryDelayMs });

export const concurrentModification = (cause: unknown): ParleyError =>
  aborted(Reason.concurrentModification, "too many concurrent changes: try again", { cause });
