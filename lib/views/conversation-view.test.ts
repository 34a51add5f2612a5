import { describe, expect, it, vi } from "vitest";
import { ConversationView } from "./conversation-view.ts";

const direct = (id: string, a: string, b: string, version = 1n, deleted = false) => ({
  conversationId: id,
  kind: "direct" as const,
  version,
  memberUserIds: deleted ? [] : [a, b],
  deleted,
});

describe("ConversationView", () => {
  it("applies only newer versions, so replays and duplicates are harmless", () => {
    const view = new ConversationView();
    view.applyMembership({
      conversationId: "g",
      kind: "group",
      version: 2n,
      memberUserIds: ["a", "b"],
      deleted: false,
    });
    view.applyMembership({
      conversationId: "g",
      kind: "group",
      version: 1n,
      memberUserIds: ["a"],
      deleted: false,
    });
    expect(view.conversation("g")?.memberUserIds).toEqual(["a", "b"]);
    view.applyBlock({ blocker: "a", blocked: "b", isBlocked: true, version: 2n });
    view.applyBlock({ blocker: "a", blocked: "b", isBlocked: false, version: 1n });
    expect(view.blocks("a", "b")).toBe(true);
    expect(view.blocks("b", "a")).toBe(false);
  });

  it("indexes live conversations by user: contacts are co-members of direct conversations", () => {
    const view = new ConversationView();
    view.applyMembership(direct("d1", "alice", "bob"));
    view.applyMembership(direct("d2", "alice", "carol"));
    view.applyMembership({
      conversationId: "g",
      kind: "group",
      version: 1n,
      memberUserIds: ["alice", "dave"],
      deleted: false,
    });
    expect([...view.contactsOf("alice")].sort()).toEqual(["bob", "carol"]);
    expect(view.shareConversation("alice", "dave")).toBe(true);
    expect(view.shareConversation("bob", "carol")).toBe(false);
    expect(
      view
        .conversationsOf("alice")
        .map((c) => c.conversationId)
        .sort(),
    ).toEqual(["d1", "d2", "g"]);
  });

  it("drops deleted conversations from the index but keeps their last members", () => {
    const view = new ConversationView();
    view.applyMembership(direct("d1", "alice", "bob"));
    view.applyMembership(direct("d1", "alice", "bob", 2n, true));
    expect(view.contactsOf("alice")).toEqual([]);
    expect(view.shareConversation("alice", "bob")).toBe(false);
    expect(view.conversation("d1")).toMatchObject({ deleted: true, memberUserIds: ["alice", "bob"] });
    view.applyMembership(direct("d1", "alice", "bob", 3n));
    expect(view.contactsOf("bob")).toEqual(["alice"]);
    view.forgetConversation("d1");
    expect(view.contactsOf("bob")).toEqual([]);
  });

  it("moves users in and out of the index as a group changes", () => {
    const view = new ConversationView();
    view.applyMembership({
      conversationId: "g",
      kind: "group",
      version: 1n,
      memberUserIds: ["a", "b"],
      deleted: false,
    });
    view.applyMembership({
      conversationId: "g",
      kind: "group",
      version: 2n,
      memberUserIds: ["a", "c"],
      deleted: false,
    });
    expect(view.conversationsOf("b")).toEqual([]);
    expect(view.shareConversation("a", "c")).toBe(true);
  });

  it("untilVersion resolves when the version (or a later one) arrives, and false on timeout", async () => {
    vi.useFakeTimers();
    try {
      const view = new ConversationView();
      view.applyMembership(direct("c", "a", "b", 2n));
      await expect(view.untilVersion("c", 2n, 1_000)).resolves.toBe(true);

      const later = view.untilVersion("c", 4n, 1_000);
      const other = view.untilVersion("d", 1n, 1_000);
      view.applyMembership(direct("c", "a", "b", 3n));
      view.applyMembership(direct("c", "a", "b", 5n));
      await expect(later).resolves.toBe(true);

      await vi.advanceTimersByTimeAsync(1_000);
      await expect(other).resolves.toBe(false);
      // A late arrival after the timeout finds nobody waiting.
      view.applyMembership(direct("d", "a", "c", 1n));
      expect(view.conversation("d")?.version).toBe(1n);
    } finally {
      vi.useRealTimers();
    }
  });
});
