import { describe, expect, it } from "vitest";
import type { PushedMessage } from "./pushed-messages.ts";
import { createPushedMessages, sampledSpanContext } from "./pushed-messages.ts";

const bob = { userId: "bob", deviceId: "phone" };
const tp = (n: number, flags = "01") => `00-${"a".repeat(31)}${n}-${"b".repeat(16)}-${flags}`;
const message = (conversationId: string, id: string, seq: number, acceptedAtMs?: number): PushedMessage => ({
  conversationId,
  messageId: id,
  seq: BigInt(seq),
  acceptedAtMs,
});

describe("pushed messages, for acks", () => {
  it("keeps sampled traceparents only", () => {
    expect(sampledSpanContext(tp(1))).toMatchObject({ traceId: `${"a".repeat(31)}1`, isRemote: true });
    expect(sampledSpanContext(tp(1, "00"))).toBeUndefined();
    expect(sampledSpanContext("")).toBeUndefined();
  });

  it("links an ack to the sampled messages it covers, once", () => {
    const pushed = createPushedMessages();
    pushed.remember(bob, message("c", "m1", 1), tp(1));
    pushed.remember(bob, message("c", "m2", 2), tp(2));
    pushed.remember(bob, message("c", "m3", 3), tp(3, "00"));
    expect(pushed.take({ userId: "bob", deviceId: "laptop" }, "c", { upToSeq: 9n }).links).toEqual([]);
    const first = pushed.take(bob, "c", { upToSeq: 1n });
    expect(first.links.map((l) => l.attributes?.["parley.message_id"])).toEqual(["m1"]);
    expect(pushed.take(bob, "c", { messageIds: ["m2"] }).links.map((l) => l.context.traceId)).toEqual([
      `${"a".repeat(31)}2`,
    ]);
    expect(pushed.take(bob, "c", { upToSeq: 9n }).links).toEqual([]);
  });

  it("gives the acceptance time of every covered message, sampled or not, to the first ack only", () => {
    const pushed = createPushedMessages();
    pushed.remember(bob, message("c", "m1", 1, 1_000), tp(1, "00"));
    pushed.remember(bob, message("c", "m2", 2, 2_000), tp(2));
    pushed.remember(bob, message("c", "m3", 3, 3_000), "");
    // Nothing worth keeping: unsampled and no acceptance time.
    pushed.remember(bob, message("c", "m4", 4), tp(4, "00"));
    expect(pushed.take(bob, "c", { messageIds: ["m2", "m3"] }).acceptedAtMs).toEqual([2_000, 3_000]);
    expect(pushed.take(bob, "c", { upToSeq: 9n }).acceptedAtMs).toEqual([1_000]);
    expect(pushed.take(bob, "c", { upToSeq: 9n }).acceptedAtMs).toEqual([]);
  });

  it("stays bounded per conversation, in conversations and in messages", () => {
    const pushed = createPushedMessages({ perConversation: 2, conversations: 1, maxLinks: 5 });
    for (let i = 1; i <= 4; i++) pushed.remember(bob, message("c", `m${i}`, i), tp(i));
    pushed.remember(bob, message("d", "x", 1), tp(5));
    expect(pushed.take(bob, "c", { upToSeq: 9n }).links).toEqual([]);
    expect(pushed.take(bob, "d", { upToSeq: 9n }).links).toHaveLength(1);

    const few = createPushedMessages({ maxMessages: 3 });
    for (let i = 1; i <= 4; i++) few.remember(bob, message(`c${i}`, `m${i}`, 1, i), "");
    // The least recently pushed conversation went first.
    expect(few.take(bob, "c1", { upToSeq: 9n }).acceptedAtMs).toEqual([]);
    expect(few.take(bob, "c4", { upToSeq: 9n }).acceptedAtMs).toEqual([4]);
  });
});
