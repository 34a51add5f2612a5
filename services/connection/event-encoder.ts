import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { isSpanContextValid, trace } from "@opentelemetry/api";
import {
  BlockChangedSchema,
  ConnectionState,
  ContactChangedSchema,
  ConversationKind,
  GroupRenamedSchema,
  MemberChangeKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import { Topics } from "../../lib/broker/broker.ts";
import type { OutboxEvent } from "../../lib/outbox.ts";
import type { ConnectionEvent, MemberChangeKind as DomainChangeKind } from "./domain/events.ts";
import type { ConversationKind as DomainKind, MemberRole as DomainRole, ViewState } from "./domain/model.ts";

const ROLE: Readonly<Record<DomainRole, MemberRole>> = {
  owner: MemberRole.OWNER,
  admin: MemberRole.ADMIN,
  member: MemberRole.MEMBER,
};

const KIND: Readonly<Record<DomainKind, ConversationKind>> = {
  direct: ConversationKind.DIRECT,
  group: ConversationKind.GROUP,
};

const CHANGE: Readonly<Record<DomainChangeKind, MemberChangeKind>> = {
  added: MemberChangeKind.ADDED,
  removed: MemberChangeKind.REMOVED,
  role_changed: MemberChangeKind.ROLE_CHANGED,
};

const STATE: Readonly<Record<ViewState, ConnectionState>> = {
  none: ConnectionState.NONE,
  pending_incoming: ConnectionState.PENDING_INCOMING,
  pending_outgoing: ConnectionState.PENDING_OUTGOING,
  accepted: ConnectionState.ACCEPTED,
  blocked: ConnectionState.BLOCKED,
};

/**
 * The W3C traceparent of the active span (`00-<trace>-<span>-<flags>`), or "" outside a trace.
 * Written into the event and into the broker message's properties, so consumers continue the
 * trace of the call that made the change.
 */
export function activeTraceparent(): string {
  const context = trace.getActiveSpan()?.spanContext();
  if (context === undefined || !isSpanContextValid(context)) return "";
  return `00-${context.traceId}-${context.spanId}-${(context.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/**
 * Encodes connection events as parley.events.v1 messages on their topics, keyed as
 * connection_events.proto specifies:
 * - MembershipChanged -> chat.memberships (compacted), key = conversation_id;
 * - BlockChanged -> chat.blocks (compacted), key = "<blocker>/<blocked>";
 * - ContactChanged -> chat.contacts, key = "<low>/<high>" (the pair sorted by byte order);
 * - GroupRenamed -> chat.groups, key = conversation_id.
 */
export function encodeConnectionEvent(event: ConnectionEvent): OutboxEvent {
  const traceparent = activeTraceparent();
  const properties = traceparent === "" ? undefined : { traceparent };
  const message = (topic: string, key: string, payload: Uint8Array): OutboxEvent => ({
    topic,
    key,
    payload,
    ...(properties === undefined ? {} : { properties }),
  });
  switch (event.type) {
    case "membership_changed":
      return message(
        Topics.memberships,
        event.conversationId,
        toBinary(
          MembershipChangedSchema,
          create(MembershipChangedSchema, {
            eventId: event.eventId,
            conversationId: event.conversationId,
            kind: KIND[event.kind],
            version: BigInt(event.version),
            members: event.members.map((m) => ({
              userId: m.userId,
              role: ROLE[m.role],
              joinedAt: timestampFromDate(m.joinedAt),
            })),
            changes: event.changes.map((c) => ({
              userId: c.userId,
              kind: CHANGE[c.kind],
              role: c.role === undefined ? MemberRole.UNSPECIFIED : ROLE[c.role],
            })),
            deleted: event.deleted,
            changedByUserId: event.changedByUserId,
            changedAt: timestampFromDate(event.changedAt),
            traceparent,
          }),
        ),
      );
    case "block_changed":
      return message(
        Topics.blocks,
        `${event.blockerUserId}/${event.blockedUserId}`,
        toBinary(
          BlockChangedSchema,
          create(BlockChangedSchema, {
            eventId: event.eventId,
            blockerUserId: event.blockerUserId,
            blockedUserId: event.blockedUserId,
            blocked: event.blocked,
            version: BigInt(event.version),
            changedAt: timestampFromDate(event.changedAt),
            traceparent,
          }),
        ),
      );
    case "contact_changed":
      return message(
        Topics.contacts,
        `${event.pair.low}/${event.pair.high}`,
        toBinary(
          ContactChangedSchema,
          create(ContactChangedSchema, {
            eventId: event.eventId,
            views: event.views.map((v) => ({
              userId: v.userId,
              otherUserId: v.otherUserId,
              state: STATE[v.state],
              previousState: STATE[v.previousState],
              bySelf: v.bySelf,
              conversationId: v.conversationId ?? "",
            })),
            version: BigInt(event.version),
            changedAt: timestampFromDate(event.changedAt),
            traceparent,
          }),
        ),
      );
    case "group_renamed":
      return message(
        Topics.groups,
        event.conversationId,
        toBinary(
          GroupRenamedSchema,
          create(GroupRenamedSchema, {
            eventId: event.eventId,
            conversationId: event.conversationId,
            name: event.name,
            changedByUserId: event.changedByUserId,
            changedAt: timestampFromDate(event.changedAt),
            traceparent,
          }),
        ),
      );
  }
}
