import { describe, expect, it } from "vitest";
import { createMessageTraces, sampledSpanContext } from "./message-traces.ts";

const bob = { userId: "bob", deviceId: "phone" };
const tp = (n: number, flags = "01") => `00-${"a".repeat(31)}${n}-${"b".repeat(16)}-${flags}`;

describe("message traces for ack links", () => {
  it("keeps sampled traceparents only", () => {
    expect(sampledSpanContext(tp(1))).toMatchObject({ traceId: `${"a".repeat(31)}1`, isRemote: true });
    expect(sampledSpanContext(tp(1, "00"))).toBeUndefined();
    expect(sampledSpanContext("")).toBeUndefined();
  });

  it("links an ack to the messages it covers, once", () => {
    const traces = createMessageTraces();
    traces.remember(bob, { conversationId: "c", messageId: "m1", seq: 1n }, tp(1));
    traces.remember(bob, { conversationId: "c", messageId: "m2", seq: 2n }, tp(2));
    traces.remember(bob, { conversationId: "c", messageId: "m3", seq: 3n }, tp(3, "00"));
    expect(traces.take({ userId: "bob", deviceId: "laptop" }, "c", { upToSeq: 9n })).toEqual([]);
    const first = traces.take(bob, "c", { upToSeq: 1n });
    expect(first.map((l) => l.attributes?.["parley.message_id"])).toEqual(["m1"]);
    expect(traces.take(bob, "c", { messageIds: ["m2"] }).map((l) => l.context.traceId)).toEqual([
      `${"a".repeat(31)}2`,
    ]);
    expect(traces.take(bob, "c", { upToSeq: 9n })).toEqual([]);
  });

  it("stays bounded", () => {
    const traces = createMessageTraces({ perConversation: 2, conversations: 1, maxLinks: 5 });
    for (let i = 1; i <= 4; i++)
      traces.remember(bob, { conversationId: "c", messageId: `m${i}`, seq: BigInt(i) }, tp(i));
    traces.remember(bob, { conversationId: "d", messageId: "x", seq: 1n }, tp(5));
    expect(traces.take(bob, "c", { upToSeq: 9n })).toEqual([]);
    expect(traces.take(bob, "d", { upToSeq: 9n })).toHaveLength(1);
  });
});
