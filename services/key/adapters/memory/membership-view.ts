import { fromBinary } from "@bufbuild/protobuf";
import type {
  BlockChanged,
  MembershipChanged,
} from "../../../../gen/parley/events/v1/connection_events_pb.ts";
import {
  BlockChangedSchema,
  MembershipChangedSchema,
} from "../../../../gen/parley/events/v1/connection_events_pb.ts";
import type { Broker, BrokerMessage, Subscription } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type { RelationshipView } from "../../domain/relationship-view.ts";

/**
 * The embedded RelationshipView: who shares a conversation with whom, and who blocks whom, held in
 * memory from connection's compacted topics. Accepted contacts are the co-members of a direct
 * conversation (connection publishes one per accepted connection and deletes it on removal or
 * block), so "accepted connection or fellow member" is "shares a conversation". A user who blocked
 * the viewer is hidden even if they still share a group. Events older than what is held (by
 * version) are ignored, so replays and duplicates are harmless.
 */
export interface MembershipView extends RelationshipView {
  applyMembership(event: MembershipChanged): void;
  /** A tombstone (empty payload) on chat.memberships: the conversation is gone. */
  forgetConversation(conversationId: string): void;
  applyBlock(event: BlockChanged): void;
  /** A tombstone on chat.blocks: the pair is not blocked. */
  forgetBlock(blockerUserId: string, blockedUserId: string): void;
}

export function createMembershipView(): MembershipView {
  const conversations = new Map<string, { version: bigint; members: ReadonlySet<string> }>();
  const conversationsOf = new Map<string, Set<string>>();
  const blocks = new Map<string, { version: bigint; blocked: boolean }>();

  const setMembers = (conversationId: string, members: ReadonlySet<string>) => {
    const before = conversations.get(conversationId)?.members ?? new Set<string>();
    for (const user of before) {
      if (members.has(user)) continue;
      const set = conversationsOf.get(user);
      set?.delete(conversationId);
      if (set?.size === 0) conversationsOf.delete(user);
    }
    for (const user of members) {
      let set = conversationsOf.get(user);
      if (set === undefined) {
        set = new Set();
        conversationsOf.set(user, set);
      }
      set.add(conversationId);
    }
  };

  const shares = (a: string, b: string) => {
    const ofA = conversationsOf.get(a);
    const ofB = conversationsOf.get(b);
    if (ofA === undefined || ofB === undefined) return false;
    const [small, large] = ofA.size <= ofB.size ? [ofA, ofB] : [ofB, ofA];
    for (const id of small) if (large.has(id)) return true;
    return false;
  };

  return {
    applyMembership(event) {
      const held = conversations.get(event.conversationId);
      if (held !== undefined && event.version <= held.version) return;
      const members = new Set(event.deleted ? [] : event.members.map((m) => m.userId));
      setMembers(event.conversationId, members);
      conversations.set(event.conversationId, { version: event.version, members });
    },
    forgetConversation(conversationId) {
      setMembers(conversationId, new Set());
      conversations.delete(conversationId);
    },
    applyBlock(event) {
      const key = `${event.blockerUserId}/${event.blockedUserId}`;
      const held = blocks.get(key);
      if (held !== undefined && event.version <= held.version) return;
      blocks.set(key, { version: event.version, blocked: event.blocked });
    },
    forgetBlock(blockerUserId, blockedUserId) {
      blocks.delete(`${blockerUserId}/${blockedUserId}`);
    },
    async visibleUsers(viewer, targets) {
      const visible = new Set<string>();
      for (const target of targets) {
        if (target === viewer) continue;
        if (blocks.get(`${target}/${viewer}`)?.blocked === true) continue;
        if (shares(viewer, target)) visible.add(target);
      }
      return visible;
    },
  };
}

/**
 * Feeds a MembershipView from `chat.memberships` and `chat.blocks` (compacted: the latest event of
 * every key first, then live); resolves once the view is complete. A message that cannot be
 * decoded is logged and skipped.
 */
export async function followRelationships(
  broker: Broker,
  view: MembershipView,
  logger: Logger,
): Promise<Subscription> {
  const guard = (apply: (message: BrokerMessage) => void) => (message: BrokerMessage) => {
    try {
      apply(message);
    } catch (err) {
      logger.warn({ err, topic: message.topic, key: message.key }, "skipping an undecodable event");
    }
  };
  const memberships = await broker.follow(
    Topics.memberships,
    { compacted: true },
    guard((message) => {
      if (message.payload.length === 0) view.forgetConversation(message.key);
      else view.applyMembership(fromBinary(MembershipChangedSchema, message.payload));
    }),
  );
  const blocks = await broker.follow(
    Topics.blocks,
    { compacted: true },
    guard((message) => {
      if (message.payload.length === 0) {
        const [blocker = "", blocked = ""] = message.key.split("/");
        view.forgetBlock(blocker, blocked);
      } else {
        view.applyBlock(fromBinary(BlockChangedSchema, message.payload));
      }
    }),
  );
  // Until the view is complete, key fetches between real contacts would be refused as unknown users.
  await Promise.all([memberships.caughtUp, blocks.caughtUp]);
  return {
    async close() {
      await memberships.close();
      await blocks.close();
    },
  };
}
