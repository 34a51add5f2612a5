import type { Context } from "@opentelemetry/api";
import { context, TraceFlags, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StopTelemetry } from "../../../../lib/telemetry.ts";
import { startTelemetry } from "../../../../lib/telemetry.ts";
import type { EdgeHostRef, PlannedItem, PushBatch, PushBatchResult } from "../../domain/ports.ts";
import { PushCallError } from "../../domain/ports.ts";
import { createCoalescingPusher } from "./coalescing-pusher.ts";

// A context manager, so the pusher can carry each caller's trace context into its call.
let stopTelemetry: StopTelemetry;
beforeAll(() => {
  stopTelemetry = startTelemetry({
    serviceName: "coalescing-pusher-test",
    spanProcessors: [new SimpleSpanProcessor({ exporter: new InMemorySpanExporter() })],
  });
});
afterAll(() => stopTelemetry());

const h1: EdgeHostRef = { hostId: "h1", pushAddress: "127.0.0.1:7001", draining: false };
const h2: EdgeHostRef = { hostId: "h2", pushAddress: "127.0.0.1:7002", draining: false };

const receipt = (n: number): PlannedItem["payload"] => ({
  case: "receipt",
  value: { conversationId: `c${n}`, upToSeq: BigInt(n) } as never,
});

/** A batch of `count` items, each for `device`, routed at `revision`. */
function batch(id: string, device: string, count = 1, revision = 1n, hostId = "h1"): PushBatch {
  const ref = { userId: device, deviceId: "phone" };
  return {
    batchId: id,
    hostId,
    routes: [{ device: ref, hostId, revision }],
    items: Array.from({ length: count }, (_, i) => ({
      devices: [ref],
      payload: receipt(i),
      traceparent: "",
    })),
  };
}

interface Call {
  readonly host: EdgeHostRef;
  readonly batch: PushBatch;
  readonly traceId: string | undefined;
}

/** An inner pusher that records its calls and answers every route "pushed", or as `answer` says. */
function recording(answer?: (batch: PushBatch) => Error | undefined) {
  const calls: Call[] = [];
  return {
    calls,
    pusher: {
      async push(host: EdgeHostRef, batch: PushBatch): Promise<PushBatchResult> {
        calls.push({ host, batch, traceId: trace.getActiveSpan()?.spanContext().traceId });
        const failure = answer?.(batch);
        if (failure !== undefined) throw failure;
        return {
          results: batch.routes.map((r) => ({
            device: r.device,
            outcome: "pushed",
            routeRevision: r.revision,
          })),
          draining: false,
        };
      },
    },
  };
}

function traced(traceId: string, sampled: boolean): Context {
  return trace.setSpanContext(context.active(), {
    traceId,
    spanId: "00f067aa0ba902b7",
    traceFlags: sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
  });
}

const devicesOf = (result: PushBatchResult) => result.results.map((r) => r.device.userId);

describe("createCoalescingPusher", () => {
  it("sends what one turn queued for a host as one call, and answers each batch with its own devices", async () => {
    const inner = recording();
    const pusher = createCoalescingPusher(inner.pusher);
    const [a, b, c, other] = await Promise.all([
      pusher.push(h1, batch("m:1@h1#0", "alice")),
      pusher.push(h1, batch("m:2@h1#0", "bob", 2)),
      pusher.push(h1, batch("r:3@h1#0", "alice")),
      pusher.push(h2, batch("m:1@h2#0", "carol", 1, 1n, "h2")),
    ]);
    expect(inner.calls.map((c) => [c.host.hostId, c.batch.items.length, c.batch.routes.length])).toEqual([
      ["h1", 4, 2],
      ["h2", 1, 1],
    ]);
    const merged = inner.calls[0]?.batch;
    expect(merged?.batchId).toMatch(/^merged:3:[0-9a-f]{40}$/);
    expect(merged?.items.map((i) => i.devices[0]?.userId)).toEqual(["alice", "bob", "bob", "alice"]);
    expect([devicesOf(a), devicesOf(b), devicesOf(c), devicesOf(other)]).toEqual([
      ["alice"],
      ["bob"],
      ["alice"],
      ["carol"],
    ]);
    // A batch alone keeps its own id; the next turn makes a call of its own.
    expect(inner.calls[1]?.batch.batchId).toBe("m:1@h2#0");
    await pusher.push(h1, batch("m:4@h1#0", "alice"));
    expect(inner.calls.at(-1)?.batch.batchId).toBe("m:4@h1#0");

    // The same batches in the same order get the same merged id (the edge drops an exact retry).
    const again = recording();
    const twin = createCoalescingPusher(again.pusher);
    await Promise.all([
      twin.push(h1, batch("m:1@h1#0", "alice")),
      twin.push(h1, batch("m:2@h1#0", "bob", 2)),
      twin.push(h1, batch("r:3@h1#0", "alice")),
    ]);
    expect(again.calls[0]?.batch.batchId).toBe(merged?.batchId);
  });

  it("starts another call at the contract's item limit, and for a device at another route revision", async () => {
    const inner = recording();
    const pusher = createCoalescingPusher(inner.pusher);
    await Promise.all([
      pusher.push(h1, batch("a", "alice", 600)),
      pusher.push(h1, batch("b", "bob", 400)),
      pusher.push(h1, batch("c", "carol", 1)),
      pusher.push(h1, batch("d", "carol", 1, 2n)),
    ]);
    expect(inner.calls.map((c) => c.batch.items.length)).toEqual([1_000, 1, 1]);
    expect(inner.calls.map((c) => c.batch.routes.map((r) => r.revision))).toEqual([[1n, 1n], [1n], [2n]]);
  });

  it("retries a merged call as a whole under its id, then fails each batch as exhausted; WRONG_HOST fails them all", async () => {
    const unavailable = new PushCallError("down", true, "UNAVAILABLE");
    const flaky = recording(() => unavailable);
    const delays: number[] = [];
    const down = createCoalescingPusher(flaky.pusher, {
      sleep: async (ms) => {
        delays.push(ms);
      },
      random: () => 1,
    });
    const outcomes = await Promise.allSettled([
      down.push(h1, batch("a", "alice")),
      down.push(h1, batch("b", "bob")),
    ]);
    // The dispatcher's policy: 3 calls, 100 then 200 ms apart, each the same request (the edge
    // drops an exact retry it already pushed by its id).
    expect(flaky.calls.map((c) => c.batch.batchId)).toEqual(Array(3).fill(flaky.calls[0]?.batch.batchId));
    expect(flaky.calls[0]?.batch.batchId).toMatch(/^merged:2:/);
    expect(delays).toEqual([100, 200]);
    for (const outcome of outcomes) {
      expect(outcome.status).toBe("rejected");
      const reason = outcome.status === "rejected" ? (outcome.reason as PushCallError) : undefined;
      expect([reason?.retryable, reason?.exhausted, reason?.reason]).toEqual([true, true, "UNAVAILABLE"]);
    }

    const moved = recording(() => new PushCallError("moved", false, "WRONG_HOST"));
    const wrongHost = createCoalescingPusher(moved.pusher);
    const refused = await Promise.allSettled([
      wrongHost.push(h1, batch("a", "alice")),
      wrongHost.push(h1, batch("b", "bob")),
    ]);
    expect(moved.calls).toHaveLength(1);
    expect(refused.map((o) => o.status === "rejected" && (o.reason as PushCallError).reason)).toEqual([
      "WRONG_HOST",
      "WRONG_HOST",
    ]);

    // The edge refuses any batch holding bob's item: only bob's batch is refused in the end.
    const refusing = recording((b) =>
      b.routes.some((r) => r.device.userId === "bob")
        ? new PushCallError("bad", false, "VALIDATION_FAILED")
        : undefined,
    );
    const pusher = createCoalescingPusher(refusing.pusher);
    const [alice, bob, carol] = await Promise.allSettled([
      pusher.push(h1, batch("a", "alice")),
      pusher.push(h1, batch("b", "bob")),
      pusher.push(h1, batch("c", "carol")),
    ]);
    expect(refusing.calls.map((c) => c.batch.batchId.split(":")[0])).toEqual(["merged", "a", "b", "c"]);
    expect(alice.status === "fulfilled" && devicesOf(alice.value)).toEqual(["alice"]);
    expect(bob.status === "rejected" && bob.reason instanceof PushCallError && bob.reason.reason).toBe(
      "VALIDATION_FAILED",
    );
    expect(carol.status === "fulfilled" && devicesOf(carol.value)).toEqual(["carol"]);
  });

  it("puts at most one sampled batch in a call and runs the call in its trace; unsampled batches join any", async () => {
    const inner = recording();
    const pusher = createCoalescingPusher(inner.pusher);
    const one = "4bf92f3577b34da6a3ce929d0e0e4736";
    const two = "0af7651916cd43dd8448eb211c80319c";
    const unsampled = "11111111111111111111111111111111";
    await Promise.all([
      context.with(traced(unsampled, false), () => pusher.push(h1, batch("u1", "alice"))),
      context.with(traced(one, true), () => pusher.push(h1, batch("s1", "bob"))),
      context.with(traced(two, true), () => pusher.push(h1, batch("s2", "carol"))),
      context.with(traced(unsampled, false), () => pusher.push(h1, batch("u2", "dave"))),
    ]);
    expect(inner.calls.map((c) => [c.traceId, c.batch.routes.map((r) => r.device.userId)])).toEqual([
      [one, ["alice", "bob"]],
      [two, ["carol", "dave"]],
    ]);
  });
});
