import type { Outbox, OutboxEvent } from "../../../lib/outbox.ts";
import type {
  ConversationKind,
  ConversationRecord,
  MemberCursor,
  MemberRecord,
  MembershipRecord,
  PairKey,
  PairRecord,
  UserRecord,
  ViewRecord,
  ViewState,
} from "./model.ts";

/**
 * The connection service's storage port: users and profiles, the two views of every pair of users,
 * conversations (direct and groups) and their members, and the outbox of events.
 *
 * Writes are optimistic: the domain reads a pair or a conversation, decides, and commits the
 * whole change with the version it read. A commit applies everything it carries (both views, the
 * direct conversation, members, and the encoded events into the outbox) atomically, or nothing:
 * when the version moved meanwhile it throws StoreConflictError and the domain starts over. So an
 * adapter needs one atomic conditional write per pair or conversation (a SQLite transaction; a
 * Cassandra lightweight transaction on the pair or conversation row plus a logged batch).
 *
 * The contract suite (connection-store.contract.ts) pins down what every adapter must do.
 */
export interface ConnectionStore {
  /** The known users among `userIds` (unknown ones are absent). */
  getUsers(userIds: readonly string[]): Promise<ReadonlyMap<string, UserRecord>>;
  /**
   * Makes `userId` a known user with an empty profile if it is not one yet; never changes an
   * existing profile. Idempotent.
   */
  registerUser(userId: string, at: Date): Promise<void>;
  /** Sets a user's profile (creating the user if needed) and returns it as stored. */
  upsertProfile(profile: {
    readonly userId: string;
    readonly displayName: string;
    readonly avatarUrl: string;
    readonly at: Date;
  }): Promise<UserRecord>;

  /** Both views of a pair and its version (0 and no views for a pair that never interacted). */
  getPair(pair: PairKey): Promise<PairRecord>;
  /**
   * Writes a pair's new state if its version is still `expectedVersion`: both views (undefined
   * deletes), the new version, the direct conversation's new state if given, and the events.
   * Throws StoreConflictError when the version moved.
   */
  commitPair(commit: PairCommit): Promise<void>;
  /**
   * The views `userId` holds, ordered by other user id, after `afterOtherUserId` if given, at most
   * `limit`, only in `states` if given.
   */
  listViews(
    userId: string,
    options: {
      readonly states?: readonly Exclude<ViewState, "none">[];
      readonly afterOtherUserId?: string;
      readonly limit: number;
    },
  ): Promise<readonly ViewRecord[]>;
  /** The views `userId` holds towards each of `otherUserIds` that has one (any order). */
  getViews(userId: string, otherUserIds: readonly string[]): Promise<readonly ViewRecord[]>;
  /** The views each of `userIds` holds towards `otherUserId` (any order). */
  getViewsTowards(userIds: readonly string[], otherUserId: string): Promise<readonly ViewRecord[]>;

  /** A conversation by id, also an ended one; undefined when it never existed. */
  getConversation(conversationId: string): Promise<ConversationRecord | undefined>;
  /** Those of `userIds` who are members of the conversation (any order). */
  getMembers(conversationId: string, userIds: readonly string[]): Promise<readonly MemberRecord[]>;
  /** Every member (at most 1,000), sorted by user id. */
  getAllMembers(conversationId: string): Promise<readonly MemberRecord[]>;
  /**
   * One page of members, owner first, then admins, then members, each by user id, after `after`
   * if given; with the membership version the page was read at (one consistent snapshot).
   */
  listMembers(
    conversationId: string,
    options: { readonly after?: MemberCursor; readonly limit: number },
  ): Promise<{ readonly membershipVersion: number; readonly members: readonly MemberRecord[] }>;
  /**
   * The live conversations `userId` is a member of, ordered by conversation id, after
   * `afterConversationId` if given, at most `limit`, only of `kind` if given.
   */
  listMemberships(
    userId: string,
    options: {
      readonly kind?: ConversationKind;
      readonly afterConversationId?: string;
      readonly limit: number;
    },
  ): Promise<readonly MembershipRecord[]>;
  /** Whether two users are both members of at least one live conversation. */
  shareConversation(userA: string, userB: string): Promise<boolean>;

  /**
   * Creates a group with its members and events. With `request`, the request id is claimed in the
   * same write: if the user already used it, nothing is written and the earlier claim is returned.
   */
  createGroup(commit: GroupCreate): Promise<GroupCreateResult>;
  /** The group a user's CreateGroup request id created, if any. */
  getGroupRequest(userId: string, requestId: string): Promise<GroupRequestRecord | undefined>;
  /**
   * Writes a conversation's new state if its membership version is still `expectedVersion`:
   * the record, members to add or update, members to remove, and the events. Throws
   * StoreConflictError when the version moved (or the conversation does not exist).
   */
  commitConversation(commit: ConversationCommit): Promise<void>;

  /** Events written by commits and not yet published, for the outbox relay. */
  readonly outbox: Outbox;
  close(): Promise<void>;
}

export interface PairCommit {
  readonly pair: PairKey;
  readonly expectedVersion: number;
  readonly version: number;
  /** low's view after the change; undefined = none (deleted). */
  readonly lowView: ViewRecord | undefined;
  /** high's view after the change; undefined = none (deleted). */
  readonly highView: ViewRecord | undefined;
  /** The pair's direct conversation after the change, when the change creates or ends it. */
  readonly direct?: {
    readonly conversation: ConversationRecord;
    /** Its members after the change: both users when live, none when ended. */
    readonly members: readonly MemberRecord[];
  };
  readonly events: readonly OutboxEvent[];
}

export interface GroupCreate {
  readonly conversation: ConversationRecord;
  readonly members: readonly MemberRecord[];
  readonly request?: GroupRequestRecord;
  readonly events: readonly OutboxEvent[];
}

export type GroupCreateResult =
  | { readonly created: true }
  | { readonly created: false; readonly existing: GroupRequestRecord };

/** A CreateGroup request id, claimed by the group it created. */
export interface GroupRequestRecord {
  readonly userId: string;
  readonly requestId: string;
  readonly conversationId: string;
  /** Identifies the request's content, to tell a retry from a different request with the same id. */
  readonly fingerprint: string;
}

export interface ConversationCommit {
  readonly conversation: ConversationRecord;
  readonly expectedVersion: number;
  readonly upsertMembers: readonly MemberRecord[];
  readonly removeMemberIds: readonly string[];
  readonly events: readonly OutboxEvent[];
}

/** A commit lost a race: what it was based on changed. The domain reads again and retries. */
export class StoreConflictError extends Error {
  override readonly name = "StoreConflictError";
}

export function isStoreConflict(err: unknown): err is StoreConflictError {
  return err instanceof StoreConflictError;
}
