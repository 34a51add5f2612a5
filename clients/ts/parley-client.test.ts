// The SDK against a scripted in-memory edge (connect's router transport): dedup, gap fills, cursor
// persistence, reconnect/backoff, Drain, Close, sends and their retries, browser mode, token refresh.
import { Code } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import { CloseReason } from "../../gen/parley/edge/v1/frames_pb.ts";
import { SeqOrder } from "../../gen/parley/history/v1/history_pb.ts";
import { CLIENT_MESSAGE_MAX_BYTES } from "../../lib/message-limits.ts";
import { ClientReason } from "./client-error.ts";
import type {
  ClientState,
  ErrorEvent,
  GapEvent,
  IncomingMessage,
  ParleyClient,
  ParleyClientOptions,
  StateChange,
} from "./index.ts";
import { createMemoryStateStore, createParleyClient, ParleyClientError } from "./index.ts";
import { CLIENT_MESSAGE_MAX_BYTES as SDK_LIMIT, sendFrameBytes } from "./message-size.ts";
import type { FakeEdge } from "./testing/fake-edge.ts";
import { createFakeEdge, cursorOf, refusal } from "./testing/fake-edge.ts";
import type { ManualClock } from "./testing/manual-clock.ts";
import { createManualClock } from "./testing/manual-clock.ts";

const A = "https://edge-a.test";
const B = "https://edge-b.test";
const C1 = "0190f2a0-0000-7000-8000-000000000001";
const C2 = "0190f2a0-0000-7000-8000-000000000002";
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ENVELOPE = {
  kind: ContentKind.TEXT,
  payload: { case: "shared" as const, value: { ciphertext: new Uint8Array([1, 2, 3]) } },
};

const clients: ParleyClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

type Setup = {
  edge: FakeEdge;
  clock: ManualClock;
  store: ReturnType<typeof createMemoryStateStore>;
  client: ParleyClient;
  shown: IncomingMessage[];
  states: StateChange[];
  errors: ErrorEvent[];
  gaps: GapEvent[];
};

function setup(
  options: Partial<ParleyClientOptions> & { edge?: FakeEdge; initial?: ClientState } = {},
): Setup {
  const edge = options.edge ?? createFakeEdge();
  const clock = createManualClock();
  const store = createMemoryStateStore(options.initial);
  const client = createParleyClient({
    transport: (url) => edge.transport(url),
    baseUrl: A,
    token: "t1",
    store,
    clock,
    random: () => 0.5,
    backoff: { baseMs: 1000, maxMs: 16_000 },
    ...options,
  });
  clients.push(client);
  const shown: IncomingMessage[] = [];
  const states: StateChange[] = [];
  const errors: ErrorEvent[] = [];
  const gaps: GapEvent[] = [];
  client.onMessage((incoming) => {
    shown.push(incoming);
  });
  client.onStateChange((change) => {
    states.push(change);
  });
  client.onError((event) => {
    errors.push(event);
  });
  client.onGap((gap) => {
    gaps.push(gap);
  });
  return { edge, clock, store, client, shown, states, errors, gaps };
}

/** Retries `check` while the client's promises settle (real event-loop turns, no timing asserted). */
async function eventually(check: () => void): Promise<void> {
  for (let turn = 0; ; turn++) {
    try {
      check();
      return;
    } catch (error) {
      if (turn > 400) {
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
}

/** Lets pending promise chains run without moving the manual clock. */
async function settle(turns = 20): Promise<void> {
  for (let i = 0; i < turns; i++) {
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

/** After a stream failure: waits for the reconnect to be scheduled, runs its backoff, waits for ready. */
async function reconnect(clock: ManualClock, client: ParleyClient): Promise<void> {
  await eventually(() => expect(client.state).toBe("reconnecting"));
  clock.advance(16_000);
  await eventually(() => expect(client.state).toBe("ready"));
}

const seqs = (shown: readonly IncomingMessage[], conversationId = C1) =>
  shown.filter((m) => m.message.conversationId === conversationId).map((m) => Number(m.message.seq));
const text = (bytes: Uint8Array | undefined) => new TextDecoder().decode(bytes);

describe("receiving", () => {
  it("hands a message pushed twice and replayed to the app exactly once", async () => {
    const { edge, clock, client, shown } = setup();
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    // Caught up by Sync (no cursor yet), then resumed the stream after it.
    expect(text(edge.streams[0]?.resumeCursor)).toBe("c1");

    const m2 = edge.deliver(C1, 2);
    edge.push(m2, cursorOf(2)); // the same push again
    await eventually(() => expect(seqs(shown)).toEqual([1, 2]));

    // A lagging edge replays the whole inbox on the next stream.
    edge.replayAll = true;
    edge.failStreams();
    await reconnect(clock, client);
    edge.deliver(C1, 3);
    await eventually(() => expect(seqs(shown)).toEqual([1, 2, 3]));
    await settle();
    expect(seqs(shown)).toEqual([1, 2, 3]);
  });

  it("with dedup off (fault tests' control runs only), every copy the edge delivers reaches the app", async () => {
    const { edge, clock, client, shown } = setup({ dedup: false });
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    const m2 = edge.deliver(C1, 2);
    edge.push(m2, cursorOf(2));
    await eventually(() => expect(seqs(shown)).toEqual([1, 2, 2]));
    edge.replayAll = true;
    edge.failStreams();
    await reconnect(clock, client);
    await eventually(() => expect(seqs(shown)).toEqual([1, 2, 2, 1, 2]));
  });

  it("remembers what was shown across runs: a new client on the same store drops replays", async () => {
    const first = setup();
    first.edge.deliver(C1, 1);
    first.edge.deliver(C1, 2);
    await first.client.connect();
    await eventually(() => expect(seqs(first.shown)).toEqual([1, 2]));
    await first.client.close();
    expect(first.store.current?.conversations[C1]).toEqual({ seq: 2n });

    // Same store, and an edge that replays everything: nothing is shown twice.
    first.edge.replayAll = true;
    const second = setup({ edge: first.edge, initial: first.store.current });
    await second.client.connect();
    first.edge.deliver(C1, 3);
    await eventually(() => expect(seqs(second.shown)).toEqual([3]));
  });

  it("fills a seq gap with ListMessages, oldest first, and delivers in seq order", async () => {
    const { edge, client, shown, store } = setup();
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    // 2..4 are stored but never pushed (e.g. this device's own sends, or lost pushes).
    edge.store(C1, 2);
    edge.store(C1, 3);
    edge.store(C1, 4);
    edge.deliver(C1, 5);
    await eventually(() => expect(seqs(shown)).toEqual([1, 2, 3, 4, 5]));
    expect(edge.listCalls).toHaveLength(1);
    expect(edge.listCalls[0]).toMatchObject({
      conversationId: C1,
      afterSeq: 1n,
      beforeSeq: 5n,
      order: SeqOrder.OLDEST_FIRST,
    });
    expect(shown.map((m) => m.source)).toEqual(["sync", "fill", "fill", "fill", "stream"]);
    await eventually(() => expect(store.current?.conversations[C1]).toEqual({ seq: 5n }));
    expect(text(store.current?.cursor)).toBe("c2");
  });

  it("passes over expired seqs and reports them", async () => {
    const { edge, client, shown, gaps } = setup();
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    edge.store(C1, 4);
    edge.deliver(C1, 5);
    await eventually(() => expect(seqs(shown)).toEqual([1, 4, 5]));
    expect(gaps).toEqual([{ conversationId: C1, fromSeq: 2n, toSeq: 3n, reason: "expired" }]);
  });

  it("shows later messages when a gap cannot be fetched, and the missing ones after a reconnect", async () => {
    const { edge, clock, client, shown, gaps } = setup();
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    edge.store(C1, 2);
    edge.store(C1, 3);
    edge.listFailures = 5; // every try of this fill fails
    edge.deliver(C1, 4);
    await eventually(() => expect(edge.listCalls).toHaveLength(1));
    expect(seqs(shown)).toEqual([1]); // 4 waits for 2..3
    edge.deliver(C2, 1); // ...but another conversation does not wait
    await eventually(() => expect(seqs(shown, C2)).toEqual([1]));
    // Each retry after its backoff (half the doubling ceiling: base 1 s, jitter fixed at 0.5).
    for (const [tries, waitMs] of [
      [2, 500],
      [3, 1000],
      [4, 2000],
    ] as const) {
      clock.advance(waitMs);
      await eventually(() => expect(edge.listCalls).toHaveLength(tries));
      expect(seqs(shown)).toEqual([1]);
    }
    clock.advance(4000);
    await eventually(() => expect(seqs(shown)).toEqual([1, 4]));
    expect(shown.find((m) => m.message.conversationId === C1 && m.message.seq === 4n)?.outOfOrder).toBe(true);
    expect(gaps).toEqual([{ conversationId: C1, fromSeq: 2n, toSeq: 3n, reason: "unavailable" }]);

    edge.failStreams();
    await reconnect(clock, client);
    await eventually(() => expect(seqs(shown)).toEqual([1, 4, 2, 3]));
    edge.deliver(C1, 5);
    await eventually(() => expect(seqs(shown)).toEqual([1, 4, 2, 3, 5]));
  });

  it("advances the stored cursor only after the handler returned, and retries a failing handler", async () => {
    const edge = createFakeEdge();
    const { client, store, clock, errors } = setup({ edge });
    let release: () => void = () => {};
    let calls = 0;
    client.onMessage(async ({ message }) => {
      if (message.seq !== 2n) {
        return;
      }
      calls += 1;
      if (calls === 1) {
        throw new Error("disk full");
      }
      await new Promise<void>((resolve) => {
        release = resolve;
      });
    });
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(text(store.current?.cursor)).toBe("c1"));

    edge.deliver(C1, 2);
    await eventually(() => expect(errors.map((e) => e.operation)).toEqual(["handler"]));
    expect(errors[0]?.error.reason).toBe("HANDLER_FAILED");
    expect(errors[0]?.attempt).toBe(1);
    await settle();
    expect(text(store.current?.cursor)).toBe("c1");

    clock.advance(500); // the handler's retry backoff
    await eventually(() => expect(calls).toBe(2));
    await settle();
    expect(text(store.current?.cursor)).toBe("c1"); // still in the handler
    expect(store.current?.conversations[C1]).toEqual({ seq: 1n });

    release();
    await eventually(() => expect(text(store.current?.cursor)).toBe("c2"));
    expect(store.current?.conversations[C1]).toEqual({ seq: 2n });
  });

  it("acknowledges DELIVERED up to the handled watermark once the handlers return", async () => {
    const { edge, client, shown } = setup();
    edge.deliver(C1, 1);
    edge.deliver(C1, 2);
    edge.deliver(C2, 7);
    await client.connect();
    await eventually(() => expect(shown).toHaveLength(3));
    await eventually(() => expect(edge.acks).toHaveLength(2));
    expect(edge.acks.map((a) => [a?.conversationId, a?.kind, a?.target.value])).toEqual([
      [C1, ReceiptKind.DELIVERED, 2n],
      [C2, ReceiptKind.DELIVERED, 7n],
    ]);
  });

  it("sync() pages Sync from the stored cursor, following `more`", async () => {
    const { edge, client, shown, store } = setup();
    edge.syncPageCap = 2;
    for (let seq = 1; seq <= 5; seq++) {
      edge.store(C1, seq);
      edge.addToInbox(edge.store(C1, seq), false);
    }
    const summary = await client.sync();
    expect(summary).toEqual({ messages: 5, receipts: 0, pages: 3 });
    expect(edge.syncCalls.map((c) => text(c.cursor))).toEqual(["", "c2", "c4"]);
    expect(seqs(shown)).toEqual([1, 2, 3, 4, 5]);
    await eventually(() => expect(text(store.current?.cursor)).toBe("c5"));

    await client.connect();
    expect(text(edge.streams[0]?.resumeCursor)).toBe("c5");
  });
});

describe("connection", () => {
  it("reconnects with full-jitter exponential backoff and resumes from the stored cursor", async () => {
    const { edge, clock, client, store, states } = setup();
    await client.connect();
    edge.deliver(C1, 1);
    await eventually(() => expect(text(store.current?.cursor)).toBe("c1"));

    edge.refuseStreams = 2;
    edge.failStreams();
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "reconnecting", retryInMs: 500 }));
    clock.advance(499);
    await settle();
    expect(edge.streams).toHaveLength(1);
    clock.advance(1); // refused
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "reconnecting", retryInMs: 1000 }));
    clock.advance(1000); // refused
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "reconnecting", retryInMs: 2000 }));
    clock.advance(2000);
    await eventually(() => expect(client.state).toBe("ready"));
    expect(edge.streams).toHaveLength(2);
    expect(text(edge.streams[1]?.resumeCursor)).toBe("c1");

    // A stream that was ready starts the backoff over.
    edge.failStreams();
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "reconnecting", retryInMs: 500 }));
  });

  it("sends heartbeats at the edge's interval and drops a stream silent for three intervals", async () => {
    const edge = createFakeEdge({ heartbeatMs: 10_000 });
    const { clock, client, states } = setup({ edge });
    await client.connect();
    clock.advance(10_000);
    await eventually(() =>
      expect(edge.streams[0]?.frames.map((f) => f.body.case)).toEqual(["hello", "heartbeat"]),
    );
    // Stop answering: the edge's heartbeat replies are what keeps the stream alive.
    const stream = edge.streams[0];
    if (stream) {
      stream.out.push = () => true;
    }
    clock.advance(30_000);
    await eventually(() => expect(states.at(-1)?.error?.reason).toBe("STREAM_STALLED"));
  });

  it("follows Drain to the named host with the given cursor, at once", async () => {
    const { edge, client, store } = setup();
    await client.connect();
    edge.deliver(C1, 1);
    await eventually(() => expect(text(store.current?.cursor)).toBe("c1"));
    edge.addToInbox(edge.store(C1, 2), false); // c2: on the edge, not yet pushed to this stream
    edge.drain(A, B, cursorOf(2));
    await eventually(() => expect(edge.streams).toHaveLength(2));
    expect(edge.streams[1]?.host).toBe(B);
    expect(text(edge.streams[1]?.resumeCursor)).toBe("c2"); // Drain's cursor, not our own
    await eventually(() => expect(text(store.current?.cursor)).toBe("c2"));
    await eventually(() => expect(client.state).toBe("ready"));
    // Sends go out on the new stream.
    await client.send({ conversationId: C1, envelope: ENVELOPE });
    expect(edge.sends[0]?.via).toBe("frame");
  });

  it("stops on Close REPLACED without fighting the other stream", async () => {
    const { edge, clock, client, states } = setup();
    await client.connect();
    edge.holdSends = true;
    const pending = client.send({ conversationId: C1, envelope: ENVELOPE });
    await eventually(() => expect(edge.sends).toHaveLength(1));
    edge.close(CloseReason.REPLACED, Code.Aborted);
    await expect(pending).rejects.toMatchObject({ reason: "SESSION_REPLACED" });
    expect(states.at(-1)).toMatchObject({ state: "replaced" });
    clock.advance(600_000);
    await settle();
    expect(edge.streams).toHaveLength(1);
    await expect(client.send({ conversationId: C1, envelope: ENVELOPE })).rejects.toMatchObject({
      reason: "SESSION_REPLACED",
    });
  });

  it("also stops when only the replaced stream's error arrives (no Close frame)", async () => {
    const { edge, clock, client } = setup();
    await client.connect();
    for (const stream of edge.liveStreams()) {
      stream.out.push({ error: refusal({ code: Code.Aborted, reason: "STREAM_REPLACED" }) });
    }
    await eventually(() => expect(client.state).toBe("replaced"));
    clock.advance(600_000);
    await settle();
    expect(edge.streams).toHaveLength(1);
  });

  it("honours Close retry_after", async () => {
    const { edge, clock, client, states } = setup();
    await client.connect();
    edge.close(CloseReason.RATE_LIMITED, Code.ResourceExhausted, 60_000);
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "reconnecting", retryInMs: 60_000 }));
    clock.advance(59_999);
    await settle();
    expect(edge.streams).toHaveLength(1);
    clock.advance(1);
    await eventually(() => expect(edge.streams).toHaveLength(2));
  });

  it("reports Close MESSAGE_TOO_LARGE as RESOURCE_EXHAUSTED and reconnects", async () => {
    const { edge, clock, client, states } = setup();
    await client.connect();
    edge.close(CloseReason.MESSAGE_TOO_LARGE, Code.ResourceExhausted);
    await eventually(() =>
      expect(states.at(-1)).toMatchObject({
        state: "reconnecting",
        error: { code: Code.ResourceExhausted, reason: "MESSAGE_TOO_LARGE" },
      }),
    );
    clock.advance(60_000);
    await eventually(() => expect(edge.streams).toHaveLength(2));
  });

  it("refreshes the token on Close TOKEN_EXPIRED and reconnects with the new one", async () => {
    const tokens = ["t1", "t2", "t3"];
    const edge = createFakeEdge();
    const { client } = setup({ edge, token: async () => tokens.shift() ?? "none" });
    await client.connect();
    expect(edge.streams[0]?.authorization).toBe("Bearer t1");
    edge.expiredTokens.add("Bearer t1");
    edge.close(CloseReason.TOKEN_EXPIRED, Code.Unauthenticated);
    await eventually(() => expect(edge.streams).toHaveLength(2));
    expect(edge.streams[1]?.authorization).toBe("Bearer t2");

    // Unary calls refresh too: one retry with a fresh token.
    edge.expiredTokens.add("Bearer t2");
    await client.history.listMessages({ conversationId: C1 }).catch(() => undefined);
    expect(edge.listCalls).toHaveLength(1);
  });

  it("stops with an error when the token cannot be renewed", async () => {
    const { edge, client, states, errors } = setup({ token: "fixed" });
    await client.connect();
    edge.close(CloseReason.TOKEN_EXPIRED, Code.Unauthenticated);
    await eventually(() => expect(states.at(-1)).toMatchObject({ state: "closed" }));
    expect(errors.map((e) => [e.operation, e.error.reason])).toEqual([["connection", "TOKEN_EXPIRED"]]);
  });
});

describe("sending", () => {
  it("retries UNAVAILABLE after the server's RetryInfo delay with the same client_message_id", async () => {
    const { edge, clock, client } = setup();
    await client.connect();
    edge.sendScript.push({ code: Code.Unavailable, reason: "BROKER_UNAVAILABLE", retryDelayMs: 2000 });
    const sent = client.send({ conversationId: C1, envelope: ENVELOPE });
    await eventually(() => expect(edge.sends).toHaveLength(1));
    await eventually(() => expect(clock.pending()).toContain(2000));
    clock.advance(2000);
    const outcome = await sent;
    expect(edge.sends).toHaveLength(2);
    const [first, second] = edge.sends.map((s) => s.message.clientMessageId);
    expect(first).toMatch(UUID_V4);
    expect(second).toBe(first);
    expect(outcome).toMatchObject({ clientMessageId: first, duplicate: false });
    expect(outcome.messageId).not.toBe("");
    expect(outcome.acceptedAt).toBeInstanceOf(Date);
  });

  it("sends again on the next stream when the stream dies before the answer", async () => {
    const { edge, clock, client } = setup();
    await client.connect();
    edge.holdSends = true;
    const sent = client.send({
      conversationId: C1,
      envelope: ENVELOPE,
      clientMessageId: crypto.randomUUID(),
    });
    await eventually(() => expect(edge.sends).toHaveLength(1));
    edge.holdSends = false;
    edge.failStreams();
    await reconnect(clock, client);
    const outcome = await sent;
    expect(edge.sends).toHaveLength(2);
    expect(edge.sends[1]?.message.clientMessageId).toBe(edge.sends[0]?.message.clientMessageId);
    expect(outcome.clientMessageId).toBe(edge.sends[0]?.message.clientMessageId);
  });

  it("refuses with the code, ErrorInfo reason and BadRequest violations, without retrying", async () => {
    const { edge, client } = setup();
    await client.connect();
    edge.sendScript.push({
      code: Code.InvalidArgument,
      reason: "VALIDATION_FAILED",
      violations: [{ field: "envelope.shared.ciphertext", description: "at most 4096 bytes" }],
    });
    const error = await client.send({ conversationId: C1, envelope: ENVELOPE }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ParleyClientError);
    expect(error).toMatchObject({
      code: Code.InvalidArgument,
      reason: "VALIDATION_FAILED",
      violations: [{ field: "envelope.shared.ciphertext", description: "at most 4096 bytes" }],
    });
    expect(edge.sends).toHaveLength(1);
  });

  it("refuses a message over the edge's 4 MiB limit without sending it, and sends one under it", async () => {
    expect(SDK_LIMIT).toBe(CLIENT_MESSAGE_MAX_BYTES);
    const { edge, client } = setup();
    await client.connect();
    const perDevice = (users: number, bytes: number) => ({
      kind: ContentKind.SENDER_KEY_DISTRIBUTION,
      payload: {
        case: "perDevice" as const,
        value: {
          recipients: Array.from({ length: users }, (_, u) => ({
            userId: `user-${u}`,
            devices: ["phone", "laptop"].map((deviceId) => ({ deviceId, ciphertext: new Uint8Array(bytes) })),
          })),
        },
      },
    });
    const error = await client
      .send({ conversationId: C1, envelope: perDevice(1_000, 2_200) })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: Code.ResourceExhausted, reason: ClientReason.MESSAGE_TOO_LARGE });
    expect(String((error as Error).message)).toContain("over the edge's limit of 4194304");
    expect(edge.sends).toHaveLength(0);
    const fits = perDevice(1_000, 2_000);
    expect(sendFrameBytes({ conversationId: C1, clientMessageId: C2, envelope: fits })).toBeLessThan(
      SDK_LIMIT,
    );
    await client.send({ conversationId: C1, envelope: fits });
    expect(edge.sends).toHaveLength(1);
  });

  it("does not retry the edge's MESSAGE_TOO_LARGE, though its code is RESOURCE_EXHAUSTED", async () => {
    const { edge, client } = setup();
    await client.connect();
    edge.sendScript.push({ code: Code.ResourceExhausted, reason: "MESSAGE_TOO_LARGE" });
    const error = await client.send({ conversationId: C1, envelope: ENVELOPE }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: Code.ResourceExhausted, reason: "MESSAGE_TOO_LARGE" });
    expect(edge.sends).toHaveLength(1);
  });

  it("gives up after sendMaxAttempts and returns the last error", async () => {
    const { edge, clock, client } = setup({ sendMaxAttempts: 2 });
    await client.connect();
    edge.sendScript.push(
      { code: Code.ResourceExhausted, reason: "RATE_LIMITED" },
      { code: Code.ResourceExhausted, reason: "RATE_LIMITED" },
    );
    const sent = client.send({ conversationId: C1, envelope: ENVELOPE }).catch((e: unknown) => e);
    await eventually(() => expect(edge.sends).toHaveLength(1));
    clock.advance(1000);
    expect(await sent).toMatchObject({ code: Code.ResourceExhausted, reason: "RATE_LIMITED" });
    expect(edge.sends).toHaveLength(2);
  });
});

describe("browser mode", () => {
  it("uses Subscribe for the down direction and unary Send, Ack and SetTyping for the up one", async () => {
    const { edge, clock, client, shown } = setup({ mode: "browser" });
    edge.deliver(C1, 1);
    await client.connect();
    await eventually(() => expect(seqs(shown)).toEqual([1]));
    expect(edge.streams.map((s) => s.kind)).toEqual(["subscribe"]);
    expect(text(edge.streams[0]?.resumeCursor)).toBe("c1");

    edge.sendScript.push({ code: Code.Unavailable, reason: "BROKER_UNAVAILABLE" });
    const sent = client.send({ conversationId: C1, envelope: ENVELOPE });
    await eventually(() => expect(edge.sends).toHaveLength(1));
    clock.advance(500);
    await sent;
    expect(edge.sends.map((s) => s.via)).toEqual(["unary", "unary"]);
    expect(edge.sends[1]?.message.clientMessageId).toBe(edge.sends[0]?.message.clientMessageId);

    await client.markRead(C1, { upToSeq: 1n });
    await client.setTyping(C1, true);
    expect(edge.acks.map((a) => a?.kind)).toContain(ReceiptKind.READ);
    expect(edge.typing).toHaveLength(1);

    // Subscribe carries the presence list: changing it reopens the stream from the cursor.
    await client.subscribePresence(["bob"]);
    await eventually(() => expect(edge.liveStreams()[0]?.presence).toEqual(["bob"]));
    expect(text(edge.liveStreams()[0]?.resumeCursor)).toBe("c1");
    expect(seqs(shown)).toEqual([1]);
    expect(edge.streams.every((s) => s.kind === "subscribe")).toBe(true);
  });
});

describe("events", () => {
  it("surfaces receipts, typing, presence and the other server events", async () => {
    const { edge, client } = setup();
    const seen: string[] = [];
    client.onReceipt((r) => {
      seen.push(`receipt:${r.upToSeq}`);
    });
    client.onTyping((t) => {
      seen.push(`typing:${t.typing}`);
    });
    client.onPresence((p) => {
      seen.push(`presence:${p.userId}`);
    });
    client.onPrekeysLow((p) => {
      seen.push(`prekeys:${p.oneTimePrekeyCount}`);
    });
    await client.connect();
    edge.pushFrame({ body: { case: "receipt", value: { conversationId: C1, upToSeq: 3n } } });
    edge.pushFrame({ body: { case: "typing", value: { conversationId: C1, typing: true } } });
    edge.pushFrame({ body: { case: "presence", value: { userId: "bob" } } });
    edge.pushFrame({ body: { case: "prekeysLow", value: { oneTimePrekeyCount: 2, lowWatermark: 10 } } });
    await eventually(() => expect(seen).toEqual(["receipt:3", "typing:true", "presence:bob", "prekeys:2"]));
  });
});
