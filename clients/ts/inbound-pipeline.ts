import type { Message } from "../../gen/parley/common/v1/message_pb.ts";
import type { Backoff } from "./backoff.ts";
import type { ParleyClientError } from "./client-error.ts";
import type { ConversationState, SeqRange } from "./client-state.ts";
import type { Clock, TimerHandle } from "./clock.ts";
import type { CursorEntry } from "./cursor-log.ts";
import { createMessageIdCache } from "./message-id-cache.ts";
import { rangesAdd, rangesGaps, rangesHas } from "./seq-ranges.ts";

/** Where a message came from: the live or replayed stream, a Sync page, or a gap fill (ListMessages). */
export type MessageSource = "stream" | "sync" | "fill";

/** A message handed to the app, exactly once. */
export type IncomingMessage = {
  readonly message: Message;
  readonly source: MessageSource;
  /**
   * True when earlier seqs of the conversation could not be fetched (ListMessages failed), so this
   * message is shown before them; they are shown when they arrive, each once.
   */
  readonly outOfOrder: boolean;
};

/** Why seqs of a conversation were passed over. */
export type GapReason =
  /** They expired (retention): the server no longer has them, and never will. */
  | "expired"
  /** The device's user is no longer a member: the server refuses to list them. */
  | "not_member"
  /** Fetching them failed for now: later messages are shown first; they are fetched again on reconnect or sync(). */
  | "unavailable";

export type GapEvent = {
  readonly conversationId: string;
  readonly fromSeq: bigint;
  readonly toSeq: bigint;
  readonly reason: GapReason;
};

/** One page of a gap fill, oldest first; `complete` when nothing in the range follows it. */
export type FillResult =
  | { readonly kind: "page"; readonly messages: readonly Message[]; readonly complete: boolean }
  | { readonly kind: "gone" }
  | { readonly kind: "failed"; readonly error: ParleyClientError };

export type InboundPipelineOptions = {
  /** What earlier runs handed to the app (from the ClientStateStore). */
  readonly conversations: Readonly<Record<string, ConversationState>>;
  /** The app's handler; the message counts as shown once it resolves. */
  readonly handle: (incoming: IncomingMessage) => Promise<void>;
  /** Fetches messages with after < seq < before, oldest first (already retried by the caller). */
  readonly fill: (conversationId: string, afterSeq: bigint, beforeSeq: bigint) => Promise<FillResult>;
  /** An inbox item is handled: its cursor may count. */
  readonly complete: (entry: CursorEntry) => void;
  /** A message of the conversation was shown, or an already shown one came again from the inbox. */
  readonly onHandled: (conversationId: string, duplicate: boolean) => void;
  /** The pipeline has nothing left to do right now. */
  readonly onSettled: () => void;
  readonly onGap: (gap: GapEvent) => void;
  readonly onHandlerError: (error: unknown, message: Message, attempt: number) => void;
  /** A bug inside the pipeline (never expected); the pipeline carries on with other conversations. */
  readonly onInternalError: (error: unknown) => void;
  /** The dedup state changed: save it. */
  readonly onChange: () => void;
  readonly clock: Clock;
  readonly backoff: Backoff;
  readonly dedupCacheSize: number;
  /** False only in fault tests' control runs: every copy the edge delivers is handed over again. */
  readonly dedup?: boolean;
};

/**
 * Turns what the edge delivers (pushed, replayed, synced, possibly twice, possibly with holes) into
 * each message handed to the app exactly once, in seq order per conversation.
 *
 * - Dedup: a message is dropped when its id was recently handled (bounded LRU) or its seq is at or
 *   below the conversation's handled watermark (or in the handled ranges above it, see
 *   ConversationState.above). The watermark is persisted, so dedup survives restarts.
 * - Order: a message with seq > watermark + 1 waits in a buffer while the gap is fetched with
 *   ListMessages. Seqs the server no longer has (expired) are passed over; when the fetch fails,
 *   the buffered messages are shown anyway (`outOfOrder`) and the hole is fetched again on the next
 *   `retryGaps()`.
 * - One message at a time: handlers never run concurrently, across all conversations.
 * - A handler that throws gets the same message again after a backoff; the conversation waits.
 */
export type InboundPipeline = {
  /** A message from the stream or Sync, with its inbox cursor entry when it has one. */
  accept(message: Message, source: "stream" | "sync", entry?: CursorEntry): void;
  /** The server's highest seq of a conversation (Sync watermarks): anything below it is missing gets fetched. */
  raiseKnownSeq(conversationId: string, lastSeq: bigint): void;
  /** Fetch again the holes left by failed fills (after a reconnect or a sync). */
  retryGaps(): void;
  /** The highest seq such that it and every seq below it were handled; undefined for unknown conversations. */
  watermark(conversationId: string): bigint | undefined;
  snapshot(): Record<string, ConversationState>;
  /** Resolves once nothing is running, queued or being fetched (a handler waiting to be retried does not count). */
  settled(): Promise<void>;
  stop(): void;
};

type Pending = { readonly message: Message; readonly source: MessageSource; readonly entries: CursorEntry[] };

type Conversation = {
  readonly id: string;
  /** False until the first message sets the watermark (a conversation first seen at seq n starts at n - 1). */
  baselined: boolean;
  seq: bigint;
  above: SeqRange[];
  buffer: Map<bigint, Pending>;
  /** Messages without a seq (never sent by a conforming edge): shown in arrival order, deduped by id only. */
  loose: Pending[];
  /** The highest seq the server reported for the conversation. */
  knownSeq: bigint;
  /** Holes up to here could not be fetched: show later messages anyway. */
  acceptedUpTo: bigint;
  filling: boolean;
  blocked: boolean;
  failures: number;
};

/** Beyond this many holes the lowest is given up, so a long outage cannot grow the state without bound. */
const MAX_HOLES = 256;

const compareSeq = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

export function createInboundPipeline(options: InboundPipelineOptions): InboundPipeline {
  const ids = createMessageIdCache(options.dedupCacheSize);
  const conversations = new Map<string, Conversation>();
  const ready = new Set<Conversation>();
  const timers = new Set<TimerHandle>();
  let waiters: (() => void)[] = [];
  let running = false;
  let settleQueued = false;
  let fills = 0;
  let stopped = false;

  for (const [id, state] of Object.entries(options.conversations)) {
    const conversation = newConversation(id);
    conversation.baselined = true;
    conversation.seq = state.seq;
    conversation.above = [...(state.above ?? [])];
    conversation.knownSeq = state.seq;
    conversations.set(id, conversation);
  }

  function newConversation(id: string): Conversation {
    return {
      id,
      baselined: false,
      seq: 0n,
      above: [],
      buffer: new Map(),
      loose: [],
      knownSeq: 0n,
      acceptedUpTo: 0n,
      filling: false,
      blocked: false,
      failures: 0,
    };
  }

  const handled = (c: Conversation, seq: bigint) => seq <= c.seq || rangesHas(c.above, seq);

  function schedule(c: Conversation) {
    if (stopped) {
      return;
    }
    ready.add(c);
    if (!running) {
      void run();
    }
  }

  async function run() {
    running = true;
    try {
      for (;;) {
        const next = ready.values().next();
        if (next.done || stopped) {
          break;
        }
        ready.delete(next.value);
        try {
          await step(next.value);
        } catch (error) {
          // A bug here must not wedge the pipeline: report it and carry on with the others.
          options.onInternalError(error);
        }
      }
    } finally {
      running = false;
    }
    options.onSettled();
    notifySettled();
  }

  /** A burst of duplicates runs no handler; still tell the client once it is over (it re-acks them). */
  function settleSoon() {
    if (running || settleQueued) {
      return;
    }
    settleQueued = true;
    queueMicrotask(() => {
      settleQueued = false;
      if (!running) {
        options.onSettled();
      }
    });
  }

  function notifySettled() {
    if (running || fills > 0 || (ready.size > 0 && !stopped)) {
      return;
    }
    const resolved = waiters;
    waiters = [];
    for (const resolve of resolved) {
      resolve();
    }
  }

  /** Folds handled ranges that touch the watermark into it. */
  function compact(c: Conversation) {
    let first = c.above[0];
    while (first !== undefined && first[0] <= c.seq + 1n) {
      if (first[1] > c.seq) {
        c.seq = first[1];
      }
      c.above.shift();
      first = c.above[0];
    }
    for (const [seq, pending] of c.buffer) {
      if (seq <= c.seq) {
        // Passed over while it waited (a concurrent skip): it was shown or is gone; either way done.
        c.buffer.delete(seq);
        finish(pending);
      }
    }
    while (c.above.length > MAX_HOLES) {
      const lowest = c.above.shift() as SeqRange;
      options.onGap({
        conversationId: c.id,
        fromSeq: c.seq + 1n,
        toSeq: lowest[0] - 1n,
        reason: "unavailable",
      });
      c.seq = lowest[1];
    }
  }

  function finish(pending: Pending) {
    for (const entry of pending.entries) {
      options.complete(entry);
    }
  }

  async function step(c: Conversation) {
    while (!stopped && !c.blocked && !c.filling) {
      compact(c);
      const loose = c.loose[0];
      if (loose !== undefined) {
        if (!(await deliver(c, undefined, loose, false))) {
          return;
        }
        continue;
      }
      const next = c.seq + 1n;
      const inOrder = c.buffer.get(next);
      if (inOrder !== undefined) {
        if (!(await deliver(c, next, inOrder, false))) {
          return;
        }
        continue;
      }
      let lowest: bigint | undefined;
      for (const seq of c.buffer.keys()) {
        if (lowest === undefined || seq < lowest) {
          lowest = seq;
        }
      }
      const lastAbove = c.above.at(-1)?.[1] ?? 0n;
      const limit = lowest ?? (c.knownSeq > lastAbove ? c.knownSeq : lastAbove) + 1n;
      const open = rangesGaps(c.above, c.seq, limit)
        .map(([from, to]): SeqRange => [from > c.acceptedUpTo ? from : c.acceptedUpTo + 1n, to])
        .find(([from, to]) => from <= to);
      if (open !== undefined) {
        startFill(c, open);
        return;
      }
      const pending = lowest === undefined ? undefined : c.buffer.get(lowest);
      if (lowest === undefined || pending === undefined) {
        return;
      }
      if (!(await deliver(c, lowest, pending, true))) {
        return;
      }
    }
  }

  async function deliver(c: Conversation, seq: bigint | undefined, pending: Pending, outOfOrder: boolean) {
    try {
      await options.handle({ message: pending.message, source: pending.source, outOfOrder });
    } catch (error) {
      c.failures += 1;
      options.onHandlerError(error, pending.message, c.failures);
      c.blocked = true;
      const timer = options.clock.setTimeout(
        () => {
          timers.delete(timer);
          c.blocked = false;
          schedule(c);
        },
        options.backoff.delay(c.failures - 1),
      );
      timers.add(timer);
      return false;
    }
    c.failures = 0;
    if (seq === undefined) {
      c.loose.shift();
    } else {
      c.buffer.delete(seq);
      if (outOfOrder) {
        c.above = rangesAdd(c.above, seq, seq);
      } else {
        c.seq = seq;
      }
      compact(c);
    }
    ids.add(pending.message.messageId);
    finish(pending);
    options.onChange();
    options.onHandled(c.id, false);
    return true;
  }

  function startFill(c: Conversation, [from, to]: SeqRange) {
    c.filling = true;
    fills += 1;
    options
      .fill(c.id, from - 1n, to + 1n)
      .catch((error: unknown): FillResult => ({ kind: "failed", error: error as ParleyClientError }))
      .then((result) => applyFill(c, from, to, result))
      .finally(() => {
        c.filling = false;
        fills -= 1;
        schedule(c);
        notifySettled();
      });
  }

  function applyFill(c: Conversation, from: bigint, to: bigint, result: FillResult) {
    if (stopped) {
      return;
    }
    if (result.kind === "gone") {
      skip(c, from, to, "not_member");
      return;
    }
    const present = new Set<bigint>(c.buffer.keys());
    let highest = from - 1n;
    if (result.kind === "page") {
      for (const message of result.messages) {
        if (message.conversationId !== c.id || message.seq < from || message.seq > to) {
          continue;
        }
        present.add(message.seq);
        highest = message.seq > highest ? message.seq : highest;
        if (!handled(c, message.seq) && !ids.has(message.messageId) && !c.buffer.has(message.seq)) {
          c.buffer.set(message.seq, { message, source: "fill", entries: [] });
        }
      }
    }
    if (result.kind === "failed" || (!result.complete && highest < from)) {
      c.acceptedUpTo = to > c.acceptedUpTo ? to : c.acceptedUpTo;
      options.onGap({ conversationId: c.id, fromSeq: from, toSeq: to, reason: "unavailable" });
      return;
    }
    // What the server listed up to here is all it has: the seqs it left out expired.
    const coveredTo = result.complete ? to : highest;
    const listed = [...present].filter((seq) => seq >= from && seq <= coveredTo).sort(compareSeq);
    let next = from;
    for (const seq of listed) {
      if (seq > next) {
        skip(c, next, seq - 1n, "expired");
      }
      next = seq + 1n;
    }
    if (next <= coveredTo) {
      skip(c, next, coveredTo, "expired");
    }
  }

  function skip(c: Conversation, from: bigint, to: bigint, reason: GapReason) {
    c.above = rangesAdd(c.above, from, to);
    options.onGap({ conversationId: c.id, fromSeq: from, toSeq: to, reason });
    options.onChange();
  }

  return {
    accept(message, source, entry) {
      if (stopped) {
        return;
      }
      let c = conversations.get(message.conversationId);
      if (c === undefined) {
        c = newConversation(message.conversationId);
        conversations.set(c.id, c);
      }
      if (message.seq > 0n && !c.baselined) {
        c.baselined = true;
        c.seq = message.seq - 1n;
        c.knownSeq = c.seq;
      }
      if (ids.has(message.messageId) || (message.seq > 0n && handled(c, message.seq))) {
        if (options.dedup === false) {
          // Shown again in arrival order, as an app without dedup would (a control run must see it).
          c.loose.push({ message, source, entries: entry === undefined ? [] : [entry] });
          schedule(c);
          return;
        }
        if (entry !== undefined) {
          options.complete(entry);
        }
        options.onHandled(c.id, true);
        settleSoon();
        return;
      }
      const waiting =
        message.seq === 0n
          ? c.loose.find((p) => p.message.messageId === message.messageId)
          : c.buffer.get(message.seq);
      if (waiting !== undefined) {
        if (entry !== undefined) {
          waiting.entries.push(entry);
        }
        return;
      }
      const pending: Pending = { message, source, entries: entry === undefined ? [] : [entry] };
      if (message.seq === 0n) {
        c.loose.push(pending);
      } else {
        c.buffer.set(message.seq, pending);
      }
      schedule(c);
    },
    raiseKnownSeq(conversationId, lastSeq) {
      const c = conversations.get(conversationId);
      if (c?.baselined && lastSeq > c.knownSeq) {
        c.knownSeq = lastSeq;
        schedule(c);
      }
    },
    retryGaps() {
      for (const c of conversations.values()) {
        c.acceptedUpTo = 0n;
        if (c.above.length > 0 || c.knownSeq > c.seq) {
          schedule(c);
        }
      }
    },
    watermark(conversationId) {
      const c = conversations.get(conversationId);
      return c?.baselined ? c.seq : undefined;
    },
    snapshot() {
      const result: Record<string, ConversationState> = {};
      for (const c of conversations.values()) {
        if (c.baselined) {
          result[c.id] = c.above.length === 0 ? { seq: c.seq } : { seq: c.seq, above: [...c.above] };
        }
      }
      return result;
    },
    settled() {
      return new Promise<void>((resolve) => {
        waiters.push(resolve);
        notifySettled();
      });
    },
    stop() {
      stopped = true;
      for (const timer of timers) {
        options.clock.clearTimeout(timer);
      }
      timers.clear();
      ready.clear();
      notifySettled();
    },
  };
}
