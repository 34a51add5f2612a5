/** A bounded set of message ids, forgetting the least recently seen first. */
export type MessageIdCache = {
  has(messageId: string): boolean;
  add(messageId: string): void;
};

export function createMessageIdCache(capacity: number): MessageIdCache {
  // A Map iterates in insertion order: re-inserting on use makes the first key the least recent.
  const ids = new Map<string, true>();
  return {
    has(messageId) {
      if (!ids.has(messageId)) {
        return false;
      }
      ids.delete(messageId);
      ids.set(messageId, true);
      return true;
    },
    add(messageId) {
      ids.delete(messageId);
      ids.set(messageId, true);
      while (ids.size > capacity) {
        const oldest = ids.keys().next();
        if (oldest.done) {
          break;
        }
        ids.delete(oldest.value);
      }
    },
  };
}
