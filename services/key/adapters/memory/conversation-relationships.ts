import type { ConversationDirectory } from "../../../../lib/views/conversation-view.ts";
import type { RelationshipView } from "../../domain/relationship-view.ts";

/**
 * RelationshipView over the shared local view of memberships and blocks (lib/views): accepted
 * contacts share a direct conversation (connection publishes one per accepted connection and
 * deletes it on removal or block), so "accepted connection or fellow member" is "shares a live
 * conversation"; a user who blocked the viewer is hidden even if they still share a group.
 */
export function createConversationRelationships(view: ConversationDirectory): RelationshipView {
  return {
    async visibleUsers(viewer, targets) {
      const visible = new Set<string>();
      for (const target of targets) {
        if (target === viewer || view.blocks(target, viewer)) continue;
        if (view.shareConversation(viewer, target)) visible.add(target);
      }
      return visible;
    },
  };
}
