/** One conversation as a service's local view holds it (from MembershipChanged events). */
export interface ConversationMembership {
  readonly conversationId: string;
  readonly kind: "direct" | "group";
  /** Membership version the view holds (events with a lower or equal version are ignored). */
  readonly version: bigint;
  readonly memberUserIds: readonly string[];
  /** A deleted conversation keeps its last members, so a refusal can say why. */
  readonly deleted: boolean;
}

/**
 * A local view of memberships and blocks, kept from the broker's compacted topics, so that the
 * hot paths (sending, member-only reads, routing typing and presence) never call the connection
 * service.
 */
export interface ConversationDirectory {
  conversation(conversationId: string): ConversationMembership | undefined;
  /** Whether `blocker` blocks `blocked`. */
  blocks(blocker: string, blocked: string): boolean;
  /** The live (not deleted) conversations `userId` is a member of. */
  conversationsOf(userId: string): readonly ConversationMembership[];
  /** Whether two users are members of one live conversation (accepted contacts share a direct one). */
  shareConversation(a: string, b: string): boolean;
  /** The user's accepted contacts: the other members of their live direct conversations. */
  contactsOf(userId: string): readonly string[];
}

/** A membership change as the view applies it (decoded from a MembershipChanged event). */
export interface MembershipUpdate {
  readonly conversationId: string;
  readonly kind: "direct" | "group";
  readonly version: bigint;
  readonly memberUserIds: readonly string[];
  readonly deleted: boolean;
}

/** A block change as the view applies it (decoded from a BlockChanged event). */
export interface BlockUpdate {
  readonly blocker: string;
  readonly blocked: string;
  readonly isBlocked: boolean;
  readonly version: bigint;
}

/**
 * An in-memory ConversationDirectory, rebuilt at start from the compacted
 * membership and block topics and kept current from them. Events may arrive twice or out of order
 * after a redelivery: versions decide, so applying an event is idempotent.
 */
export class ConversationView implements ConversationDirectory {
  readonly #conversations = new Map<string, ConversationMembership>();
  /** Callers waiting for a conversation to reach a membership version (see `untilVersion`). */
  readonly #waiting = new Map<string, Set<{ readonly version: bigint; readonly resolve: () => void }>>();
  readonly #blocks = new Map<string, { blocked: boolean; version: bigint }>();
  /** user -> ids of the live conversations they are in (the reverse index for contacts and sharing). */
  readonly #liveByUser = new Map<string, Set<string>>();

  applyMembership(update: MembershipUpdate): void {
    const current = this.#conversations.get(update.conversationId);
    if (current !== undefined && current.version >= update.version) return;
    this.#store({
      conversationId: update.conversationId,
      kind: update.kind,
      version: update.version,
      // A deletion carries no members; keep the last known ones so a refusal can name its cause.
      memberUserIds:
        update.deleted && current !== undefined ? current.memberUserIds : [...update.memberUserIds],
      deleted: update.deleted,
    });
  }

  /** A tombstone (empty payload) on the compacted topic: the conversation is gone for good. */
  forgetConversation(conversationId: string): void {
    const current = this.#conversations.get(conversationId);
    if (current !== undefined) this.#store({ ...current, deleted: true });
  }

  #store(next: ConversationMembership): void {
    const previous = this.#conversations.get(next.conversationId);
    if (previous !== undefined && !previous.deleted) {
      for (const user of previous.memberUserIds) {
        const ids = this.#liveByUser.get(user);
        ids?.delete(next.conversationId);
        if (ids?.size === 0) this.#liveByUser.delete(user);
      }
    }
    if (!next.deleted) {
      for (const user of next.memberUserIds) {
        let ids = this.#liveByUser.get(user);
        if (ids === undefined) {
          ids = new Set();
          this.#liveByUser.set(user, ids);
        }
        ids.add(next.conversationId);
      }
    }
    this.#conversations.set(next.conversationId, next);
    const waiting = this.#waiting.get(next.conversationId);
    if (waiting !== undefined) {
      for (const waiter of waiting) if (waiter.version <= next.version) waiter.resolve();
    }
  }

  /**
   * Resolves true once the view holds `conversationId` at `version` or later, false after
   * `timeoutMs`: lets a caller that learned of a change from its source (the connection service)
   * wait for the broker to bring it here instead of answering from a stale view.
   */
  untilVersion(conversationId: string, version: bigint, timeoutMs: number): Promise<boolean> {
    if ((this.#conversations.get(conversationId)?.version ?? -1n) >= version) return Promise.resolve(true);
    return new Promise((resolve) => {
      let waiting = this.#waiting.get(conversationId);
      if (waiting === undefined) {
        waiting = new Set();
        this.#waiting.set(conversationId, waiting);
      }
      const finish = (reached: boolean) => {
        clearTimeout(timer);
        waiting.delete(waiter);
        if (waiting.size === 0) this.#waiting.delete(conversationId);
        resolve(reached);
      };
      const waiter = { version, resolve: () => finish(true) };
      const timer = setTimeout(() => finish(false), timeoutMs);
      waiting.add(waiter);
    });
  }

  conversationsOf(userId: string): readonly ConversationMembership[] {
    const ids = this.#liveByUser.get(userId);
    if (ids === undefined) return [];
    return [...ids].flatMap((id) => {
      const conversation = this.#conversations.get(id);
      return conversation === undefined ? [] : [conversation];
    });
  }

  shareConversation(a: string, b: string): boolean {
    const ofA = this.#liveByUser.get(a);
    const ofB = this.#liveByUser.get(b);
    if (ofA === undefined || ofB === undefined) return false;
    const [small, large] = ofA.size <= ofB.size ? [ofA, ofB] : [ofB, ofA];
    for (const id of small) if (large.has(id)) return true;
    return false;
  }

  contactsOf(userId: string): readonly string[] {
    const contacts = new Set<string>();
    for (const conversation of this.conversationsOf(userId)) {
      if (conversation.kind !== "direct") continue;
      for (const member of conversation.memberUserIds) if (member !== userId) contacts.add(member);
    }
    return [...contacts];
  }

  applyBlock(update: BlockUpdate): void {
    const key = blockKey(update.blocker, update.blocked);
    const current = this.#blocks.get(key);
    if (current !== undefined && current.version >= update.version) return;
    this.#blocks.set(key, { blocked: update.isBlocked, version: update.version });
  }

  /** A tombstone on the block topic: the pair is not blocked. */
  forgetBlock(blocker: string, blocked: string): void {
    this.#blocks.delete(blockKey(blocker, blocked));
  }

  conversation(conversationId: string): ConversationMembership | undefined {
    return this.#conversations.get(conversationId);
  }

  blocks(blocker: string, blocked: string): boolean {
    return this.#blocks.get(blockKey(blocker, blocked))?.blocked ?? false;
  }
}

function blockKey(blocker: string, blocked: string): string {
  return `${blocker}/${blocked}`;
}
