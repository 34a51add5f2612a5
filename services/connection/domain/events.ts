import type { OutboxEvent } from "../../../lib/outbox.ts";
import type { ConversationKind, MemberRole, PairKey, ViewState } from "./model.ts";

/**
 * What the connection service announces, in domain terms. The event encoder turns each into its
 * parley.events.v1 message, topic and key; the store writes the result to its outbox in the same
 * transaction as the change.
 */
export type ConnectionEvent =
  | ContactChangedEvent
  | BlockChangedEvent
  | MembershipChangedEvent
  | GroupRenamedEvent;

/** One user's view of a pair after a change (only views whose state changed are sent). */
export interface ContactViewChange {
  readonly userId: string;
  readonly otherUserId: string;
  readonly state: ViewState;
  readonly previousState: ViewState;
  /** `userId` made the change. */
  readonly bySelf: boolean;
  /** The pair's direct conversation when `state` is accepted. */
  readonly conversationId: string | undefined;
}

/** events.v1 ContactChanged on chat.contacts, key "<low>/<high>". */
export interface ContactChangedEvent {
  readonly type: "contact_changed";
  readonly eventId: string;
  readonly pair: PairKey;
  /** The pair's version after the change. */
  readonly version: number;
  readonly views: readonly ContactViewChange[];
  readonly changedAt: Date;
}

/** events.v1 BlockChanged on chat.blocks (compacted), key "<blocker>/<blocked>". */
export interface BlockChangedEvent {
  readonly type: "block_changed";
  readonly eventId: string;
  readonly blockerUserId: string;
  readonly blockedUserId: string;
  readonly blocked: boolean;
  /** The pair's version after the change (increases for every change of the pair, so also per direction). */
  readonly version: number;
  readonly changedAt: Date;
}

export type MemberChangeKind = "added" | "removed" | "role_changed";

export interface MemberChange {
  readonly userId: string;
  readonly kind: MemberChangeKind;
  /** The role after the change; undefined when removed. */
  readonly role: MemberRole | undefined;
}

/** events.v1 MembershipChanged on chat.memberships (compacted), key = conversation id. */
export interface MembershipChangedEvent {
  readonly type: "membership_changed";
  readonly eventId: string;
  readonly conversationId: string;
  readonly kind: ConversationKind;
  readonly version: number;
  /** Every member after the change, sorted by user id (empty when deleted). */
  readonly members: readonly {
    readonly userId: string;
    readonly role: MemberRole;
    readonly joinedAt: Date;
  }[];
  readonly changes: readonly MemberChange[];
  readonly deleted: boolean;
  /** Empty for changes the system made. */
  readonly changedByUserId: string;
  readonly changedAt: Date;
}

/** events.v1 GroupRenamed on chat.groups, key = conversation id. */
export interface GroupRenamedEvent {
  readonly type: "group_renamed";
  readonly eventId: string;
  readonly conversationId: string;
  readonly name: string;
  readonly changedByUserId: string;
  readonly changedAt: Date;
}

/**
 * Turns a domain event into what the outbox stores (topic, key, payload, properties). Called
 * inside the request's context, so it may read the active trace.
 */
export type EventEncoder = (event: ConnectionEvent) => OutboxEvent;
