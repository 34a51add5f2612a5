/** An inclusive range of seqs, `[from, to]`. */
export type SeqRange = readonly [from: bigint, to: bigint];

/** What the client has handed to the app in one conversation. */
export type ConversationState = {
  /** Every seq up to and including this one was handed to the app (or is gone from the server for good). */
  readonly seq: bigint;
  /**
   * Seqs above `seq` also handed to the app: only after a gap could not be filled, so the
   * messages after it were shown before it. The missing seqs are fetched again later and shown
   * when they arrive. Sorted, disjoint, usually empty.
   */
  readonly above?: readonly SeqRange[];
};

/**
 * What a device must keep between runs for exactly-once display: the inbox cursor to resume from
 * and, per conversation, which seqs were already handed to the app. The cursor only ever moves
 * past messages the app's handler has returned for.
 */
export type ClientState = {
  /** Opaque inbox position (ServerMessage.cursor, Drain.resume_cursor or Sync next_cursor); empty at first. */
  readonly cursor: Uint8Array;
  readonly conversations: Readonly<Record<string, ConversationState>>;
};

/**
 * Where the client keeps its state. `set` receives a complete snapshot each time (never a diff), so
 * an implementation just overwrites; the client never runs two `set` calls at once.
 */
export type ClientStateStore = {
  get(): Promise<ClientState | undefined>;
  set(state: ClientState): Promise<void>;
};

export const EMPTY_CLIENT_STATE: ClientState = { cursor: new Uint8Array(0), conversations: {} };

/** The default store: memory only, so a new process starts from scratch (and syncs everything unacknowledged). */
export function createMemoryStateStore(
  initial?: ClientState,
): ClientStateStore & { readonly current: ClientState | undefined } {
  let state = initial;
  return {
    get: async () => state,
    set: async (next) => {
      state = next;
    },
    get current() {
      return state;
    },
  };
}

/** The `getItem`/`setItem` half of the Web Storage API (`localStorage`), or anything shaped like it. */
export type KeyValueStorage = {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
};

/** A store in Web Storage (`localStorage` in browsers) under one key, as JSON. */
export function createWebStorageStateStore(
  storage: KeyValueStorage,
  key = "parley.client-state",
): ClientStateStore {
  return {
    async get() {
      const text = storage.getItem(key);
      return text === null ? undefined : parseClientState(text);
    },
    async set(state) {
      storage.setItem(key, serializeClientState(state));
    },
  };
}

/** JSON for a ClientState (cursor in base64, seqs as decimal strings), for stores that keep text. */
export function serializeClientState(state: ClientState): string {
  const conversations: Record<string, { seq: string; above?: [string, string][] }> = {};
  for (const [id, conversation] of Object.entries(state.conversations)) {
    const above = conversation.above ?? [];
    conversations[id] =
      above.length === 0
        ? { seq: conversation.seq.toString() }
        : { seq: conversation.seq.toString(), above: above.map(([a, b]) => [a.toString(), b.toString()]) };
  }
  return JSON.stringify({ v: 1, cursor: toBase64(state.cursor), conversations });
}

/** The inverse of `serializeClientState`; throws a TypeError on text it did not write. */
export function parseClientState(text: string): ClientState {
  const raw: unknown = JSON.parse(text);
  if (!isRecord(raw) || raw.v !== 1 || typeof raw.cursor !== "string" || !isRecord(raw.conversations)) {
    throw new TypeError("not a serialized Parley client state (version 1)");
  }
  const conversations: Record<string, ConversationState> = {};
  for (const [id, value] of Object.entries(raw.conversations)) {
    if (!isRecord(value) || typeof value.seq !== "string") {
      throw new TypeError(`bad conversation state for ${id}`);
    }
    const above = Array.isArray(value.above)
      ? value.above.map((range): SeqRange => {
          if (!Array.isArray(range) || range.length !== 2) {
            throw new TypeError(`bad seq range for ${id}`);
          }
          return [BigInt(String(range[0])), BigInt(String(range[1]))];
        })
      : [];
    conversations[id] = above.length === 0 ? { seq: BigInt(value.seq) } : { seq: BigInt(value.seq), above };
  }
  return { cursor: fromBase64(raw.cursor), conversations };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// btoa/atob exist in browsers and in Node (no Buffer, so the SDK stays browser-safe).
function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes;
}
