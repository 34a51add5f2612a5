import { create } from "@bufbuild/protobuf";
import { context, type Span, trace } from "@opentelemetry/api";
import { ClientError, Status } from "nice-grpc";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReceiptKind } from "../gen/parley/common/v1/message_pb.ts";
import type { Acknowledgement as AckFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import { AcknowledgementSchema as AckFrameSchema } from "../gen/parley/edge/v1/frames_pb.ts";
import type {
  MarkDeliveredRequest,
  RecordAcknowledgementsRequest,
} from "../gen/parley/history/v1/history_service_pb.ts";
import { notFound, toStatus, unavailable } from "../lib/errors.ts";
import type { StopTelemetry } from "../lib/telemetry.ts";
import { startTelemetry } from "../lib/telemetry.ts";
import { createAcknowledgementBatcher, MAX_MESSAGE_IDS_PER_CALL } from "./ack-batcher.ts";

let stopTelemetry: StopTelemetry;
const savedSampler = process.env.OTEL_TRACES_SAMPLER;
beforeAll(() => {
  // Every span this file starts is recorded, whatever the caller's environment says.
  process.env.OTEL_TRACES_SAMPLER = "always_on";
  stopTelemetry = startTelemetry({ serviceName: "ack-batcher-test" });
});
afterAll(async () => {
  await stopTelemetry();
  if (savedSampler === undefined) delete process.env.OTEL_TRACES_SAMPLER;
  else process.env.OTEL_TRACES_SAMPLER = savedSampler;
});
const tracer = trace.getTracer("ack-batcher-test");

const conversation = "01a1fe75-706e-704f-a1d8-e7bb1cc12f44";
const device = (userId: string) => ({ userId, deviceId: "phone" }) as never;
const ack = (kind: ReceiptKind, upTo: bigint): AckFrame =>
  create(AckFrameSchema, { conversationId: conversation, kind, target: { case: "upToSeq", value: upTo } });

/**
 * History as the batcher sees it: answers each acknowledgement with watermarks derived from its
 * request (delivered = up_to_seq, read = up_to_seq + 100), refuses user "mallory" NOT_FOUND, and
 * records what it was called with.
 */
function recordingHistory(options: { refuseBatch?: Error; unavailableFor?: string } = {}) {
  const calls: { method: string; users: string[]; traceparents?: string[]; activeSpanId?: string }[] = [];
  const state = (request: MarkDeliveredRequest) => {
    const upTo = request.target.case === "upToSeq" ? request.target.value : 0n;
    return { deliveredUpToSeq: upTo, readUpToSeq: upTo + 100n };
  };
  const single = (method: string) => async (request: MarkDeliveredRequest) => {
    calls.push({
      method,
      users: [request.device?.userId ?? ""],
      activeSpanId: trace.getActiveSpan()?.spanContext().spanId,
    });
    if (request.device?.userId === "mallory") throw new ClientError(method, Status.NOT_FOUND, "not a member");
    return { recorded: true, state: state(request) } as never;
  };
  return {
    calls,
    history: {
      async recordAcknowledgements(request: RecordAcknowledgementsRequest) {
        calls.push({
          method: "RecordAcknowledgements",
          users: request.acknowledgements.map((a) => a.kind.value?.device?.userId ?? ""),
          traceparents: request.acknowledgements.map((a) => a.traceparent),
          activeSpanId: trace.getActiveSpan()?.spanContext().spanId,
        });
        if (options.refuseBatch !== undefined) throw options.refuseBatch;
        return {
          outcomes: request.acknowledgements.map(({ kind }) => {
            const value = kind.value as MarkDeliveredRequest;
            if (value.device?.userId === options.unavailableFor) {
              return {
                outcome: { case: "error", value: toStatus(unavailable("STORE_UNAVAILABLE", "busy")) },
              };
            }
            return value.device?.userId === "mallory"
              ? {
                  outcome: {
                    case: "error",
                    value: toStatus(notFound("CONVERSATION_NOT_FOUND", "not a member")),
                  },
                }
              : { outcome: { case: "result", value: { recorded: true, state: state(value) } } };
          }),
        } as never;
      },
      markDelivered: single("MarkDelivered"),
      markRead: single("MarkRead"),
    } as never,
  };
}

describe("createAcknowledgementBatcher", () => {
  it("sends the acks of one turn in one call, in order, and answers each with its own watermark", async () => {
    const { calls, history } = recordingHistory();
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const answers = await Promise.all([
      batcher.submit(device("bob"), ack(ReceiptKind.DELIVERED, 3n)),
      batcher.submit(device("carol"), ack(ReceiptKind.READ, 4n)),
      batcher.submit(device("dave"), ack(ReceiptKind.DELIVERED, 5n)),
    ]);
    expect(answers).toEqual([3n, 104n, 5n]);
    expect(calls.map(({ method, users }) => ({ method, users }))).toEqual([
      { method: "RecordAcknowledgements", users: ["bob", "carol", "dave"] },
    ]);
    // A later turn makes a call of its own.
    await batcher.submit(device("erin"), ack(ReceiptKind.DELIVERED, 1n));
    expect(calls.map((c) => c.users)).toEqual([["bob", "carol", "dave"], ["erin"]]);
  });

  it("retries an acknowledgement answered UNAVAILABLE in the batch with a call of its own, as a single call is retried", async () => {
    const { calls, history } = recordingHistory({ unavailableFor: "bob" });
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const answers = await Promise.all([
      batcher.submit(device("bob"), ack(ReceiptKind.DELIVERED, 3n)),
      batcher.submit(device("carol"), ack(ReceiptKind.DELIVERED, 4n)),
    ]);
    expect(answers).toEqual([3n, 4n]);
    expect(calls.map(({ method, users }) => ({ method, users }))).toEqual([
      { method: "RecordAcknowledgements", users: ["bob", "carol"] },
      { method: "MarkDelivered", users: ["bob"] },
    ]);
  });

  it("fails only the acknowledgement history refused, with history's error", async () => {
    const { history } = recordingHistory();
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const [bob, mallory] = await Promise.allSettled([
      batcher.submit(device("bob"), ack(ReceiptKind.DELIVERED, 3n)),
      batcher.submit(device("mallory"), ack(ReceiptKind.DELIVERED, 3n)),
    ]);
    expect(bob).toEqual({ status: "fulfilled", value: 3n });
    expect(mallory.status).toBe("rejected");
    expect((mallory as PromiseRejectedResult).reason).toMatchObject({
      code: "not_found",
      reason: "CONVERSATION_NOT_FOUND",
      message: "not a member",
    });
  });

  it.each([
    ["INVALID_ARGUMENT", Status.INVALID_ARGUMENT],
    ["RESOURCE_EXHAUSTED (too large)", Status.RESOURCE_EXHAUSTED],
  ])("retries a batch refused %s one acknowledgement per call", async (_, status) => {
    const { calls, history } = recordingHistory({
      refuseBatch: new ClientError("RecordAcknowledgements", status, "refused as a whole"),
    });
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const results = await Promise.allSettled([
      batcher.submit(device("bob"), ack(ReceiptKind.READ, 2n)),
      batcher.submit(device("mallory"), ack(ReceiptKind.DELIVERED, 2n)),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected"]);
    expect((results[0] as PromiseFulfilledResult<bigint>).value).toBe(102n);
    expect(calls.map((c) => c.method)).toEqual(["RecordAcknowledgements", "MarkRead", "MarkDelivered"]);
  });

  it("fails every acknowledgement of a call that failed for another reason, with its error", async () => {
    const outage = new ClientError("RecordAcknowledgements", Status.UNAVAILABLE, "history is down");
    const { calls, history } = recordingHistory({ refuseBatch: outage });
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const results = await Promise.allSettled([
      batcher.submit(device("bob"), ack(ReceiptKind.DELIVERED, 1n)),
      batcher.submit(device("carol"), ack(ReceiptKind.DELIVERED, 1n)),
    ]);
    expect(results).toEqual([
      { status: "rejected", reason: outage },
      { status: "rejected", reason: outage },
    ]);
    expect(calls).toHaveLength(1);
  });

  it("keeps a call's message ids under MAX_MESSAGE_IDS_PER_CALL, so one client's long lists cannot oversize it", async () => {
    const { calls, history } = recordingHistory();
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const ids = (n: number) => Array.from({ length: n }, () => crypto.randomUUID());
    const byIds = (n: number): AckFrame =>
      create(AckFrameSchema, {
        conversationId: conversation,
        kind: ReceiptKind.DELIVERED,
        target: { case: "messageIds", value: { messageIds: ids(n) } },
      });
    const half = MAX_MESSAGE_IDS_PER_CALL / 2;
    await Promise.all([
      batcher.submit(device("a"), byIds(half)),
      batcher.submit(device("b"), ack(ReceiptKind.DELIVERED, 1n)),
      batcher.submit(device("c"), byIds(half)),
      batcher.submit(device("d"), byIds(1)),
      batcher.submit(device("e"), ack(ReceiptKind.DELIVERED, 1n)),
    ]);
    expect(calls.map((c) => c.users)).toEqual([
      ["a", "b", "c"],
      ["d", "e"],
    ]);
  });

  it("gives each acknowledgement its span's traceparent, sampled or not, and sends the call outside every ack's trace", async () => {
    const { calls, history } = recordingHistory();
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const traced = tracer.startSpan("bob's ack");
    // What an ack span left out by the sampler is: a span context, nothing recorded.
    const unsampled = trace.wrapSpanContext({
      traceId: "1".repeat(32),
      spanId: "2".repeat(16),
      traceFlags: 0,
    });
    const submitIn = (span: Span, user: string) =>
      context.with(trace.setSpan(context.active(), span), () =>
        batcher.submit(device(user), ack(ReceiptKind.DELIVERED, 1n)),
      );
    await Promise.all([
      submitIn(traced, "bob"),
      submitIn(unsampled, "carol"),
      batcher.submit(device("dave"), ack(ReceiptKind.DELIVERED, 1n)),
    ]);
    traced.end();
    unsampled.end();
    const { traceId, spanId } = traced.spanContext();
    expect(calls).toEqual([
      {
        method: "RecordAcknowledgements",
        users: ["bob", "carol", "dave"],
        traceparents: [`00-${traceId}-${spanId}-01`, `00-${"1".repeat(32)}-${"2".repeat(16)}-00`, ""],
        activeSpanId: undefined,
      },
    ]);
  });

  it("retries the acknowledgements of a refused batch each in its submitter's trace", async () => {
    const { calls, history } = recordingHistory({
      refuseBatch: new ClientError("RecordAcknowledgements", Status.INVALID_ARGUMENT, "refused as a whole"),
    });
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000 });
    const bobs = tracer.startSpan("bob's ack");
    const carols = tracer.startSpan("carol's ack");
    await Promise.all(
      [
        [bobs, "bob"],
        [carols, "carol"],
      ].map(([span, user]) =>
        context.with(trace.setSpan(context.active(), span as Span), () =>
          batcher.submit(device(user as string), ack(ReceiptKind.DELIVERED, 1n)),
        ),
      ),
    );
    bobs.end();
    carols.end();
    expect(calls.slice(1).map(({ users, activeSpanId }) => ({ users, activeSpanId }))).toEqual([
      { users: ["bob"], activeSpanId: bobs.spanContext().spanId },
      { users: ["carol"], activeSpanId: carols.spanContext().spanId },
    ]);
  });

  it("splits a turn's acknowledgements into calls of at most maxPerCall", async () => {
    const { calls, history } = recordingHistory();
    const batcher = createAcknowledgementBatcher({ history, deadlineMs: 1_000, maxPerCall: 2 });
    const users = ["a", "b", "c", "d", "e"];
    await Promise.all(users.map((u) => batcher.submit(device(u), ack(ReceiptKind.DELIVERED, 1n))));
    expect(calls.map((c) => c.users)).toEqual([["a", "b"], ["c", "d"], ["e"]]);
  });
});
