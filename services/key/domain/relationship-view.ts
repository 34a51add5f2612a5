/**
 * Who may see whose keys (key_service.proto): the user themselves, their ACCEPTED connections
 * and the members of any conversation they share; never someone who blocked the viewer. The key
 * service must not call the connection service on every fetch, so it reads a local view kept up
 * to date from connection's events (the shared lib/views view of `chat.memberships` and
 * `chat.blocks`, which sender reads too; adapters/memory/conversation-relationships.ts). The view is eventually consistent: a connection
 * accepted a moment ago may not be visible for the time the event takes to arrive.
 */
export interface RelationshipView {
  /** The subset of `targetUserIds` whose keys `viewerUserId` may see (the viewer itself excluded). */
  visibleUsers(viewerUserId: string, targetUserIds: readonly string[]): Promise<ReadonlySet<string>>;
}
