import type { AttributeValue } from "@opentelemetry/api";
import { describe, expect, it } from "vitest";
import type { SpanKindName, SpanRecord } from "../../lib/span-file.ts";
import { findMessagePath, renderMessagePath, serviceOf } from "./message-path.ts";

const T0 = 1_700_000_000_000_000_000n;
const MESSAGE = "0190e8f4-1c7b-7000-8000-000000000001";
const OTHER = "0190e8f4-1c7b-7000-8000-000000000002";
const TRACE = "a".repeat(32);

let nextSpan = 1;
function span(
  name: string,
  options: {
    trace?: string;
    parent?: SpanRecord;
    kind?: SpanKindName;
    startMs: number;
    durationMs: number;
    attributes?: Record<string, AttributeValue>;
    links?: SpanRecord["links"];
    service?: string;
  },
): SpanRecord {
  const start = T0 + BigInt(options.startMs * 1_000_000);
  return {
    traceId: options.trace ?? TRACE,
    spanId: (nextSpan++).toString(16).padStart(16, "0"),
    ...(options.parent === undefined ? {} : { parentSpanId: options.parent.spanId }),
    name,
    kind: options.kind ?? "INTERNAL",
    service: options.service ?? "parley-parley",
    scope: "parley.test",
    startTimeUnixNano: start.toString(),
    endTimeUnixNano: (start + BigInt(options.durationMs * 1_000_000)).toString(),
    status: { code: "UNSET" },
    attributes: options.attributes ?? {},
    links: options.links ?? [],
    events: [],
  };
}

function world() {
  const send = span("parley.edge.v1.SessionService/Session send", {
    kind: "SERVER",
    startMs: 0,
    durationMs: 30,
    attributes: {
      "rpc.service": "parley.edge.v1.SessionService",
      "parley.message_id": MESSAGE,
      "parley.conversation_id": "conv",
      "parley.sender.user_id": "alice",
      "parley.sender.device_id": "phone",
    },
  });
  const call = span("parley.sender.v1.SenderService/SendMessage", {
    kind: "CLIENT",
    parent: send,
    startMs: 1,
    durationMs: 20,
  });
  const served = span("parley.sender.v1.SenderService/SendMessage", {
    kind: "SERVER",
    parent: call,
    startMs: 2,
    durationMs: 10,
    attributes: { "rpc.service": "parley.sender.v1.SenderService", "parley.message_id": MESSAGE },
  });
  const consumed = span("process chat.messages", {
    kind: "CONSUMER",
    parent: served,
    startMs: 5,
    durationMs: 3,
    attributes: { "messaging.destination.subscription.name": "history", "parley.seq": 7 },
  });
  const pushServer = span("parley.delivery.v1.EdgePushService/PushBatch", {
    kind: "SERVER",
    parent: consumed,
    startMs: 9,
    durationMs: 2,
    attributes: { "rpc.service": "parley.delivery.v1.EdgePushService" },
  });
  const push = span("edge.push", {
    parent: pushServer,
    startMs: 10,
    durationMs: 1,
    attributes: {
      "parley.message_ids": [MESSAGE],
      "parley.device_ids": ["bob/phone"],
      "parley.device.count": 1,
      "parley.push.pushed": 1,
    },
  });
  const ack = span("parley.edge.v1.SessionService/Session ack", {
    trace: "b".repeat(32),
    kind: "SERVER",
    startMs: 40,
    durationMs: 5,
    attributes: {
      "rpc.service": "parley.edge.v1.SessionService",
      "parley.user_id": "bob",
      "parley.device_id": "phone",
      "parley.receipt.kind": "delivered",
    },
    links: [
      { traceId: "c".repeat(32), spanId: "1".repeat(16), attributes: { "parley.link.kind": "stream" } },
      { traceId: TRACE, spanId: send.spanId, attributes: { "parley.message_id": MESSAGE } },
    ],
  });
  const marked = span("parley.history.v1.HistoryService/RecordAcknowledgements delivered", {
    trace: "b".repeat(32),
    kind: "SERVER",
    parent: ack,
    startMs: 42,
    durationMs: 1,
    attributes: { "rpc.service": "parley.history.v1.HistoryService" },
  });
  // Another message's ack whose link names that message, into this trace: not ours.
  const otherAck = span("parley.edge.v1.SessionService/Session ack", {
    trace: "d".repeat(32),
    kind: "SERVER",
    startMs: 50,
    durationMs: 1,
    attributes: { "parley.user_id": "carol", "parley.device_id": "phone", "parley.receipt.kind": "read" },
    links: [{ traceId: TRACE, spanId: send.spanId, attributes: { "parley.message_id": OTHER } }],
  });
  const unrelated = span("parley.edge.v1.SessionService/Session send", {
    trace: "e".repeat(32),
    startMs: 0,
    durationMs: 1,
    attributes: { "parley.message_id": OTHER },
  });
  return { send, call, served, consumed, pushServer, push, ack, marked, otherAck, unrelated };
}

describe("a message's path from spans", () => {
  it("is its trace as a tree, its pushes, and the acks linking to it", () => {
    const w = world();
    const path = findMessagePath(Object.values(w).reverse(), MESSAGE);
    expect(path?.traceIds).toEqual([TRACE]);
    expect(path?.conversationId).toBe("conv");
    expect(path?.tree).toHaveLength(1);
    const root = path?.tree[0];
    expect(root?.span.spanId).toBe(w.send.spanId);
    const services: string[] = [];
    const walk = (nodes: NonNullable<typeof path>["tree"]) => {
      for (const node of nodes) {
        services.push(`${node.service} ${node.span.name}`);
        walk(node.children);
      }
    };
    walk(path?.tree ?? []);
    expect(services).toEqual([
      "edge parley.edge.v1.SessionService/Session send",
      "edge parley.sender.v1.SenderService/SendMessage",
      "sender parley.sender.v1.SenderService/SendMessage",
      "history process chat.messages",
      "edge parley.delivery.v1.EdgePushService/PushBatch",
      "edge edge.push",
    ]);
    expect(path?.pushes.map((p) => p.spanId)).toEqual([w.push.spanId]);
    expect(path?.acks.map((a) => [a.device, a.kind, a.tree[0]?.children[0]?.service])).toEqual([
      ["bob/phone", "delivered", "history"],
    ]);
  });

  it("renders offsets from the send and durations, then pushes and acks", () => {
    const path = findMessagePath(Object.values(world()), MESSAGE);
    if (path === undefined) throw new Error("not found");
    const text = renderMessagePath(path);
    expect(text).toContain(`message ${MESSAGE}\nconversation conv\nsent by alice/phone\n`);
    expect(text).toMatch(/\+0\.0ms\s+30\.0ms {2}edge {7}SessionService\/Session send {2}\(server\)/);
    expect(text).toMatch(/\+5\.0ms\s+3\.0ms {8}history {4}process chat\.messages {2}\(consumer, seq 7\)/);
    expect(text).toContain("  +10.0ms  1/1 devices pushed: bob/phone");
    expect(text).toContain(`  bob/phone delivered at +40.0ms (trace ${"b".repeat(32)})`);
    expect(text).toMatch(
      /\+42\.0ms\s+1\.0ms {8}history {4}HistoryService\/RecordAcknowledgements delivered {2}\(server\)/,
    );
    expect(text).not.toContain("carol");
  });

  it("is not found when no span names the message", () => {
    expect(findMessagePath(Object.values(world()), "0190e8f4-1c7b-7000-8000-00000000ffff")).toBeUndefined();
  });

  it("names the service of spans made in one process by what they serve", () => {
    const base = { startMs: 0, durationMs: 1 };
    expect(
      serviceOf(
        span("x", { ...base, kind: "SERVER", attributes: { "rpc.service": "parley.key.v1.KeyService" } }),
        "edge",
      ),
    ).toBe("key");
    expect(
      serviceOf(
        span("x", { ...base, kind: "CLIENT", attributes: { "rpc.service": "parley.key.v1.KeyService" } }),
        "sender",
      ),
    ).toBe("sender");
    expect(
      serviceOf(
        span("x", {
          ...base,
          kind: "CONSUMER",
          attributes: { "messaging.destination.subscription.name": "delivery" },
        }),
        "history",
      ),
    ).toBe("delivery");
    expect(serviceOf(span("x", { ...base, service: "parley-history" }), undefined)).toBe("history");
  });
});
