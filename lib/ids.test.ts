import { v5, validate, version } from "uuid";
import { describe, expect, it } from "vitest";
import { DIRECT_CONVERSATION_NAMESPACE, directConversationId, newGroupId, newMessageId } from "./ids.ts";

const CANONICAL = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe("newMessageId", () => {
  it("is a canonical lowercase UUIDv7", () => {
    const id = newMessageId();
    expect(id).toMatch(CANONICAL);
    expect(version(id)).toBe(7);
    expect(version(newGroupId())).toBe(7);
  });

  it("sorts in creation order, also within one millisecond", () => {
    const ids = Array.from({ length: 2000 }, () => newMessageId());
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});

describe("directConversationId", () => {
  it("is a deterministic UUIDv5", () => {
    const id = directConversationId("alice", "bob");
    expect(validate(id)).toBe(true);
    expect(id).toMatch(CANONICAL);
    expect(version(id)).toBe(5);
    expect(directConversationId("alice", "bob")).toBe(id);
    expect(id).toBe(v5("direct:alice:bob", DIRECT_CONVERSATION_NAMESPACE));
    // A test vector: other languages and future versions must derive this very id.
    expect(id).toBe("d5851327-f0f0-5c65-9ecc-c7a4406d5884");
  });

  it("does not depend on who starts the conversation", () => {
    expect(directConversationId("bob", "alice")).toBe(directConversationId("alice", "bob"));
    expect(directConversationId("Zed", "amy")).toBe(directConversationId("amy", "Zed"));
  });

  it("differs for different pairs", () => {
    const ids = new Set([
      directConversationId("alice", "bob"),
      directConversationId("alice", "carol"),
      directConversationId("bob", "carol"),
      directConversationId("alice", "alice"),
    ]);
    expect(ids.size).toBe(4);
  });

  it("uses a namespace derived from a documented URL", () => {
    expect(DIRECT_CONVERSATION_NAMESPACE).toBe(v5("https://parley.dev/ns/direct-conversation", v5.URL));
  });
});
