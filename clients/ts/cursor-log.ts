/** One inbox item whose cursor may be committed once the item has been handled. */
export type CursorEntry = { readonly cursor: Uint8Array; done: boolean };

/**
 * Inbox cursors in arrival order, committed as a prefix: the committed cursor is that of the last
 * item such that it and every item before it were handled. An item handed to the app late (held
 * back by a seq gap, or by a failing handler) holds the cursor back, so a restart replays from
 * before it and loses nothing; dedup drops what was already shown.
 */
export type CursorLog = {
  /** An item that must be handled before its cursor counts. */
  track(cursor: Uint8Array): CursorEntry;
  /** A position with nothing of its own to handle (Drain.resume_cursor, an empty Sync page). */
  mark(cursor: Uint8Array): void;
  complete(entry: CursorEntry): void;
  /** The cursor to persist. */
  committed(): Uint8Array;
  /** The newest cursor seen: where a stream of this process resumes (everything before it is in memory). */
  latest(): Uint8Array;
  /** Forgets everything and starts again at `cursor` (after the edge refused a cursor). */
  reset(cursor: Uint8Array): void;
};

export function createCursorLog(initial: Uint8Array, onCommit: (cursor: Uint8Array) => void): CursorLog {
  let committed = initial;
  let latest = initial;
  let entries: CursorEntry[] = [];
  const advance = () => {
    let moved = false;
    while (entries[0]?.done) {
      committed = (entries.shift() as CursorEntry).cursor;
      moved = true;
    }
    if (moved) {
      onCommit(committed);
    }
  };
  return {
    track(cursor) {
      const entry: CursorEntry = { cursor, done: false };
      entries.push(entry);
      latest = cursor;
      return entry;
    },
    mark(cursor) {
      entries.push({ cursor, done: true });
      latest = cursor;
      advance();
    },
    complete(entry) {
      if (!entry.done) {
        entry.done = true;
        advance();
      }
    },
    committed: () => committed,
    latest: () => latest,
    reset(cursor) {
      entries = [];
      committed = cursor;
      latest = cursor;
      onCommit(cursor);
    },
  };
}
