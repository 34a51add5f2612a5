/**
 * The connection service's records, as the domain and its store see them. Plain data: no
 * protobuf, no engine types. Times are `Date`s (stores keep milliseconds).
 */

/** Largest conversation: the creator and up to 999 others (connection.v1 Conversation.member_count). */
export const MAX_GROUP_MEMBERS = 1000;

/** List RPCs: page_size 0 means this. */
export const DEFAULT_PAGE_SIZE = 100;
/** List RPCs: page_size at most this (protovalidate enforces it too). */
export const MAX_PAGE_SIZE = 1000;

/**
 * How one user of a pair sees their connection with the other. `none` is never stored: a missing
 * view is `none`.
 */
export type ViewState = "none" | "pending_incoming" | "pending_outgoing" | "accepted" | "blocked";

/** A stored view (state other than `none`) of `userId` towards `otherUserId`. */
export interface ViewRecord {
  readonly userId: string;
  readonly otherUserId: string;
  readonly state: Exclude<ViewState, "none">;
  /** When the connection was first requested (or, for a block without an earlier connection, blocked). */
  readonly createdAt: Date;
  /** When `state` last changed. */
  readonly updatedAt: Date;
}

/**
 * A known user. A user exists for the connection service once they have a profile record: made by
 * UpsertProfile, or (with an empty display name) by their first state-changing call here (asking
 * to connect, accepting, blocking, creating a group...). Users are created by the app (the token
 * subject); this service never learns of a user who has not acted on it, so such a user is
 * "unknown" (NOT_FOUND) to others until then.
 */
export interface UserRecord {
  readonly userId: string;
  /** Empty when the user never set a profile. */
  readonly displayName: string;
  /** Empty when there is none. */
  readonly avatarUrl: string;
  /** When the profile was last set; undefined when never. */
  readonly profileUpdatedAt: Date | undefined;
  readonly createdAt: Date;
}

/** An unordered pair of distinct users, `low` sorting before `high` by code unit (bytewise for user ids). */
export interface PairKey {
  readonly low: string;
  readonly high: string;
}

export function pairKey(a: string, b: string): PairKey {
  return a < b ? { low: a, high: b } : { low: b, high: a };
}

/** Everything about one pair: both views and the pair's version (0 when nothing ever happened). */
export interface PairRecord {
  readonly pair: PairKey;
  /** Increases with every change of the pair (ContactChanged.version and BlockChanged.version). */
  readonly version: number;
  /** low's view of high, if any. */
  readonly lowView: ViewRecord | undefined;
  /** high's view of low, if any. */
  readonly highView: ViewRecord | undefined;
}

/** The view `userId` holds in a pair (undefined = none). */
export function viewOf(pair: PairRecord, userId: string): ViewRecord | undefined {
  return userId === pair.pair.low ? pair.lowView : pair.highView;
}

export function stateOf(view: ViewRecord | undefined): ViewState {
  return view?.state ?? "none";
}

export type ConversationKind = "direct" | "group";

/** Member roles, highest first. Direct conversations have two `member`s. */
export type MemberRole = "owner" | "admin" | "member";

/** Sort rank of a role in member listings: owner first, then admins, then members. */
export const ROLE_RANK: Readonly<Record<MemberRole, number>> = { owner: 0, admin: 1, member: 2 };

/** A direct conversation or a group, as stored (also once ended: `deleted`). */
export interface ConversationRecord {
  readonly conversationId: string;
  readonly kind: ConversationKind;
  /** Group name ("" for direct conversations). */
  readonly name: string;
  /** The group's owner ("" for direct conversations and ended groups). */
  readonly ownerUserId: string;
  /** The pair of a direct conversation (sorted), kept after it ended; undefined for groups. */
  readonly directUsers: PairKey | undefined;
  /** Conversation.membership_version: increases with every change of members or roles. */
  readonly membershipVersion: number;
  readonly memberCount: number;
  readonly createdAt: Date;
  /** When its name, membership or roles last changed. */
  readonly updatedAt: Date;
  /** Ended: a direct conversation whose connection is gone, or a group whose last member left. */
  readonly deleted: boolean;
}

export interface MemberRecord {
  readonly conversationId: string;
  readonly userId: string;
  readonly role: MemberRole;
  readonly joinedAt: Date;
}

/** Where a member listing continues: after this member in (role rank, user id) order. */
export interface MemberCursor {
  readonly role: MemberRole;
  readonly userId: string;
}

/** A conversation the user is a member of, with their own membership. */
export interface MembershipRecord {
  readonly conversation: ConversationRecord;
  readonly member: MemberRecord;
}

/** Orders members as listings and events need them: owner, admins, members, each by user id. */
export function compareMembersByRole(a: MemberCursor, b: MemberCursor): number {
  const rank = ROLE_RANK[a.role] - ROLE_RANK[b.role];
  if (rank !== 0) return rank;
  return compareIds(a.userId, b.userId);
}

/** Byte order of ASCII ids (what SQLite's BINARY collation and Cassandra's text ordering give). */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
