import { fromBinary } from "@bufbuild/protobuf";
import {
  BlockChangedSchema,
  ConversationKind,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import type { Broker, Subscription } from "../broker/broker.ts";
import { Topics } from "../broker/broker.ts";
import type { Logger } from "../logging.ts";
import type { ConversationView } from "./conversation-view.ts";

/**
 * Keeps a conversation view current from the compacted membership and block topics:
 * first the latest event of every conversation and pair, then every new one. Resolves once the
 * view holds everything the topics retained. An event the view
 * cannot decode is logged and skipped: one bad event must not stop the service for everyone.
 */
export async function feedConversationView(
  broker: Broker,
  view: ConversationView,
  logger: Logger,
): Promise<Subscription[]> {
  const memberships = await broker.follow(Topics.memberships, { compacted: true }, (message) => {
    if (message.payload.length === 0) {
      view.forgetConversation(message.key);
      return;
    }
    try {
      const event = fromBinary(MembershipChangedSchema, message.payload);
      view.applyMembership({
        conversationId: event.conversationId,
        kind: event.kind === ConversationKind.DIRECT ? "direct" : "group",
        version: event.version,
        memberUserIds: event.members.map((m) => m.userId),
        deleted: event.deleted,
      });
    } catch (err) {
      logger.error({ err, topic: message.topic, id: message.id }, "undecodable membership event skipped");
    }
  });
  const blocks = await broker.follow(Topics.blocks, { compacted: true }, (message) => {
    if (message.payload.length === 0) {
      const [blocker = "", blocked = ""] = message.key.split("/");
      view.forgetBlock(blocker, blocked);
      return;
    }
    try {
      const event = fromBinary(BlockChangedSchema, message.payload);
      view.applyBlock({
        blocker: event.blockerUserId,
        blocked: event.blockedUserId,
        isBlocked: event.blocked,
        version: event.version,
      });
    } catch (err) {
      logger.error({ err, topic: message.topic, id: message.id }, "undecodable block event skipped");
    }
  });
  // A view missing conversations would refuse legitimate sends: serve only once it is complete.
  await Promise.all([memberships.caughtUp, blocks.caughtUp]);
  return [memberships, blocks];
}
