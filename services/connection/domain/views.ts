import type { DeviceIdentityRecord } from "./device-directory.ts";
import type { ConversationRecord, MemberRecord, MemberRole, UserRecord, ViewState } from "./model.ts";

/** What the domain answers; handlers turn these into connection.v1 messages. */

/** A user's profile as shown to someone allowed to see it. */
export interface ProfileView {
  readonly userId: string;
  /** Empty when the user never set a profile. */
  readonly displayName: string;
  readonly avatarUrl: string;
  /** Undefined when the user never set a profile. */
  readonly updatedAt: Date | undefined;
}

export function toProfileView(userId: string, user: UserRecord | undefined): ProfileView {
  return {
    userId,
    displayName: user?.displayName ?? "",
    avatarUrl: user?.avatarUrl ?? "",
    updatedAt: user?.profileUpdatedAt,
  };
}

/** The caller's relationship with one other user. */
export interface ConnectionView {
  readonly otherUserId: string;
  readonly state: Exclude<ViewState, "none">;
  /** Shown for PENDING_INCOMING and ACCEPTED only; undefined otherwise. */
  readonly profile: ProfileView | undefined;
  /** The direct conversation when ACCEPTED. */
  readonly conversationId: string | undefined;
  /** The other user's devices when ACCEPTED; empty otherwise. */
  readonly devices: readonly DeviceIdentityRecord[];
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** A conversation as one of its members sees it. */
export interface ConversationView {
  readonly conversation: ConversationRecord;
  /** The caller's own role. */
  readonly role: MemberRole;
  /** For a direct conversation: the other member. */
  readonly direct: { readonly otherUserId: string; readonly otherProfile: ProfileView } | undefined;
}

export interface MemberView {
  readonly member: MemberRecord;
  readonly profile: ProfileView;
}

/** One page of a listing. */
export interface Page<T> {
  readonly items: readonly T[];
  /** Empty when there are no more. */
  readonly nextPageToken: string;
}
