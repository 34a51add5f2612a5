// Issue 7, traces: one trace per message from the edge send to every device's push, acks that link
// back to it, sampling by ratio with `force_trace` overriding it. The embedded mesh runs in this
// process with every span kept in memory (lib/telemetry.ts `spanProcessors`).
import type { AttributeValue, SpanContext } from "@opentelemetry/api";
import { SpanKind } from "@opentelemetry/api";
import type { ReadableSpan } from "@opentelemetry/sdk-trace";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StopTelemetry } from "../lib/telemetry.ts";
import { startTelemetry } from "../lib/telemetry.ts";
import type { Collected, TestMesh, TestUser } from "./support/mesh-users.ts";
import { collect, createGroup, createUser, pairwiseEnvelope, startTestMesh } from "./support/mesh-users.ts";

const exporter = new InMemorySpanExporter();
let stopTelemetry: StopTelemetry | undefined;
let mesh: TestMesh | undefined;
const savedEnv = { sampler: process.env.OTEL_TRACES_SAMPLER, arg: process.env.OTEL_TRACES_SAMPLER_ARG };

beforeAll(async () => {
  // Nothing is sampled by ratio: what is exported is there because of force_trace alone.
  process.env.OTEL_TRACES_SAMPLER = "parentbased_traceidratio";
  process.env.OTEL_TRACES_SAMPLER_ARG = "0";
  stopTelemetry = startTelemetry({
    serviceName: "parley-tracing-test",
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  mesh = await startTestMesh();
});

afterAll(async () => {
  await mesh?.stop();
  await stopTelemetry?.();
  restore("OTEL_TRACES_SAMPLER", savedEnv.sampler);
  restore("OTEL_TRACES_SAMPLER_ARG", savedEnv.arg);
});

function restore(name: string, value: string | undefined) {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

const SEND_SPAN = "parley.edge.v1.SessionService/Session send";
const ACK_SPAN = "parley.edge.v1.SessionService/Session ack";

const spans = () => exporter.getFinishedSpans();
const traceOf = (span: ReadableSpan) => span.spanContext().traceId;
const parentOf = (span: ReadableSpan): SpanContext | undefined => span.parentSpanContext;

async function until(what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Every string in an attribute value (arrays flattened). */
function strings(value: AttributeValue | undefined): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === "string");
  return [];
}

function one(found: readonly ReadableSpan[], what: string): ReadableSpan {
  expect(found, what).toHaveLength(1);
  return found[0] as ReadableSpan;
}

describe("tracing a message end to end", () => {
  let alice: TestUser;
  let bob: TestUser;
  let carol: TestUser;
  let groupId: string;
  const seen = new Map<string, Collected>();

  beforeAll(async () => {
    if (mesh === undefined) throw new Error("no mesh");
    alice = await createUser(mesh, "alice", ["phone"]);
    bob = await createUser(mesh, "bob", ["phone"]);
    carol = await createUser(mesh, "carol", ["phone"]);
    groupId = await createGroup(alice, [bob, carol], "traced");
    for (const user of [bob, carol]) seen.set(user.userId, collect(user.primary.client));
    await Promise.all([alice, bob, carol].map((u) => u.primary.client.connect()));
  });

  afterAll(async () => {
    await Promise.all([alice, bob, carol].map((u) => u?.primary.client.close()));
  });

  it("joins send, sender, both broker hops, history, delivery and the edge push in one trace; acks link to it", async () => {
    const secret = "tracing-secret-plaintext";
    const sent = await alice.primary.client.send({
      conversationId: groupId,
      envelope: pairwiseEnvelope(alice.primary, [alice, bob, carol], secret),
      forceTrace: true,
    });
    const messageId = sent.messageId;
    for (const user of [bob, carol]) await seen.get(user.userId)?.untilMessages(1, groupId);

    // The acks both recipients' SDKs send once the message was shown, each in its own trace.
    const acksOf = (userId: string) =>
      spans().filter((s) => s.name === ACK_SPAN && s.attributes["parley.user_id"] === userId);
    await until("both acks linking to the message", () =>
      [bob, carol].every((u) => acksOf(u.userId).some((s) => s.links.length > 1)),
    );

    const send = one(
      spans().filter((s) => s.name === SEND_SPAN && s.attributes["parley.message_id"] === messageId),
      "the edge's send span",
    );
    const traceId = traceOf(send);
    expect(send.kind).toBe(SpanKind.SERVER);
    expect(send.attributes["parley.conversation_id"]).toBe(groupId);
    expect(send.attributes["parley.force_trace"]).toBe(true);
    // A root: the stream's (unsampled) span is a link, not the parent.
    expect(parentOf(send)).toBeUndefined();

    const inTrace = spans().filter((s) => traceOf(s) === traceId);
    const byId = new Map(inTrace.map((s) => [s.spanContext().spanId, s]));
    const childOf = (span: ReadableSpan, parent: ReadableSpan) =>
      expect(parentOf(span)?.spanId, `${span.name} under ${parent.name}`).toBe(parent.spanContext().spanId);
    const find = (name: string, kind: SpanKind) => inTrace.filter((s) => s.name === name && s.kind === kind);

    // The edge's SendMessage call and the sender's server span.
    const sendClient = one(find("parley.sender.v1.SenderService/SendMessage", SpanKind.CLIENT), "client");
    const sendServer = one(find("parley.sender.v1.SenderService/SendMessage", SpanKind.SERVER), "server");
    childOf(sendClient, send);
    childOf(sendServer, sendClient);

    // chat.messages: sender's producer span, history's consumer span.
    const published = one(find("publish chat.messages", SpanKind.PRODUCER), "publish chat.messages");
    const stored = one(find("process chat.messages", SpanKind.CONSUMER), "process chat.messages");
    childOf(published, sendServer);
    childOf(stored, published);
    expect(published.attributes).toMatchObject({
      "messaging.system": "pulsar",
      "messaging.destination.name": "chat.messages",
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
    });
    expect(stored.attributes).toMatchObject({
      "messaging.operation.type": "process",
      "messaging.destination.subscription.name": "history",
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
      "parley.seq": 1,
    });

    // chat.deliveries: the outbox relay's producer span continues history's consumer span.
    const relayed = one(find("publish chat.deliveries", SpanKind.PRODUCER), "publish chat.deliveries");
    const delivered = one(find("process chat.deliveries", SpanKind.CONSUMER), "process chat.deliveries");
    childOf(relayed, stored);
    childOf(delivered, relayed);
    expect(delivered.attributes).toMatchObject({
      "messaging.destination.subscription.name": "delivery",
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
    });

    // Delivery's PushBatch call(s), the edge's server span(s), one edge.push span per batch.
    const pushClients = find("parley.delivery.v1.EdgePushService/PushBatch", SpanKind.CLIENT);
    const pushServers = find("parley.delivery.v1.EdgePushService/PushBatch", SpanKind.SERVER);
    const pushes = find("edge.push", SpanKind.INTERNAL);
    expect(pushClients.length).toBeGreaterThan(0);
    expect(pushServers).toHaveLength(pushClients.length);
    expect(pushes).toHaveLength(pushClients.length);
    for (const client of pushClients) childOf(client, delivered);
    for (const server of pushServers) {
      const client = pushClients.find((c) => c.spanContext().spanId === parentOf(server)?.spanId);
      expect(client, "PushBatch server span under a client span").toBeDefined();
    }
    for (const push of pushes) {
      const server = pushServers.find((s) => s.spanContext().spanId === parentOf(push)?.spanId);
      expect(server, "edge.push under a PushBatch server span").toBeDefined();
      expect(strings(push.attributes["parley.message_ids"])).toEqual([messageId]);
      expect(strings(push.attributes["parley.conversation_ids"])).toEqual([groupId]);
    }
    const pushedDevices = pushes.reduce((n, s) => n + Number(s.attributes["parley.push.pushed"] ?? 0), 0);
    // Both recipients, and the sending device its echo (the message's seq, no ciphertext).
    expect(pushedDevices).toBe(3);
    expect(pushes.flatMap((s) => strings(s.attributes["parley.device_ids"])).sort()).toEqual([
      "alice/phone",
      "bob/phone",
      "carol/phone",
    ]);

    // One tree: every span of the trace hangs from the send span.
    for (const span of inTrace) {
      if (span === send) continue;
      const parent = parentOf(span);
      expect(parent && byId.has(parent.spanId), `${span.name} has its parent in the trace`).toBe(true);
    }
    // And every span naming the message is in this trace.
    const naming = spans().filter((s) => s.attributes["parley.message_id"] === messageId);
    expect(naming.length).toBeGreaterThanOrEqual(4);
    expect(new Set(naming.map(traceOf))).toEqual(new Set([traceId]));

    // Each recipient's ack: its own trace, linked to the message's, with the history call under it.
    for (const user of [bob, carol]) {
      const ack = acksOf(user.userId).find((s) => s.links.some((l) => l.context.traceId === traceId));
      expect(ack, `${user.userId}'s ack links to the message's trace`).toBeDefined();
      if (ack === undefined) continue;
      expect(traceOf(ack)).not.toBe(traceId);
      expect(ack.attributes["parley.conversation_id"]).toBe(groupId);
      const link = ack.links.find((l) => l.context.traceId === traceId);
      expect(link?.attributes?.["parley.message_id"]).toBe(messageId);
      // The ack shared a RecordAcknowledgements call; history recorded it in a span of its own,
      // under the ack's span, and the receipt it published continued the ack's trace.
      const marked = one(
        spans().filter(
          (s) =>
            traceOf(s) === traceOf(ack) &&
            s.name === "parley.history.v1.HistoryService/RecordAcknowledgements delivered" &&
            s.kind === SpanKind.SERVER,
        ),
        `${user.userId}'s acknowledgement recorded by history in the ack's trace`,
      );
      expect(parentOf(marked)?.spanId).toBe(ack.spanContext().spanId);
      expect(marked.attributes["parley.conversation_id"]).toBe(groupId);
      await until(`${user.userId}'s receipt published in the ack's trace`, () =>
        spans().some(
          (s) =>
            traceOf(s) === traceOf(ack) &&
            s.kind === SpanKind.PRODUCER &&
            parentOf(s)?.spanId === marked.spanContext().spanId,
        ),
      );
    }

    // The ciphertext (readable here) is in no attribute of any span, anywhere.
    for (const span of spans()) {
      for (const [key, value] of Object.entries(span.attributes)) {
        for (const text of strings(value)) expect(text, `${span.name} ${key}`).not.toContain(secret);
      }
    }
  });

  it("leaves a message without force_trace unsampled at ratio 0", async () => {
    const sent = await alice.primary.client.send({
      conversationId: groupId,
      envelope: pairwiseEnvelope(alice.primary, [alice, bob, carol], "not traced"),
    });
    for (const user of [bob, carol]) await seen.get(user.userId)?.untilMessages(2, groupId);
    // Nothing to wait for when nothing is sampled: give the spans still open (the consumer spans
    // end after their pushes) a moment to end, had they been sampled.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(spans().filter((s) => s.attributes["parley.message_id"] === sent.messageId)).toEqual([]);
    expect(
      spans().filter((s) => strings(s.attributes["parley.message_ids"]).includes(sent.messageId)),
    ).toEqual([]);
  });
});
