// The SDK's small pieces: backoff, seq ranges, the cursor log, state serialization, the emitter.
import { describe, expect, it } from "vitest";
import { createBackoff } from "./backoff.ts";
import type { ClientState } from "./client-state.ts";
import { createWebStorageStateStore, parseClientState, serializeClientState } from "./client-state.ts";
import { createCursorLog } from "./cursor-log.ts";
import { createEventEmitter } from "./event-emitter.ts";
import { createMessageIdCache } from "./message-id-cache.ts";
import { rangesAdd, rangesGaps, rangesHas } from "./seq-ranges.ts";

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (value: Uint8Array) => new TextDecoder().decode(value);

describe("backoff", () => {
  it("draws uniformly below base * 2^attempt, capped at max (full jitter)", () => {
    const top = createBackoff({ baseMs: 100, maxMs: 1000 }, () => 0.999999);
    expect([0, 1, 2, 3, 4, 10].map((a) => top.delay(a))).toEqual([99, 199, 399, 799, 999, 999]);
    const bottom = createBackoff({ baseMs: 100, maxMs: 1000 }, () => 0);
    expect(bottom.delay(5)).toBe(0);
    expect(() => createBackoff({ baseMs: 0 })).toThrow(RangeError);
  });
});

describe("seq ranges", () => {
  it("merges touching ranges and lists the gaps between them", () => {
    let ranges = rangesAdd([], 5n, 5n);
    ranges = rangesAdd(ranges, 9n, 10n);
    ranges = rangesAdd(ranges, 6n, 6n);
    expect(ranges).toEqual([
      [5n, 6n],
      [9n, 10n],
    ]);
    expect(rangesHas(ranges, 6n)).toBe(true);
    expect(rangesHas(ranges, 7n)).toBe(false);
    expect(rangesGaps(ranges, 2n, 12n)).toEqual([
      [3n, 4n],
      [7n, 8n],
      [11n, 11n],
    ]);
    expect(rangesAdd(ranges, 7n, 8n)).toEqual([[5n, 10n]]);
  });
});

describe("cursor log", () => {
  it("commits a cursor only when it and every item before it are handled", () => {
    const commits: string[] = [];
    const log = createCursorLog(bytes("c0"), (c) => commits.push(text(c)));
    const one = log.track(bytes("c1"));
    const two = log.track(bytes("c2"));
    log.complete(two);
    expect(text(log.committed())).toBe("c0");
    expect(text(log.latest())).toBe("c2");
    log.complete(one);
    expect(text(log.committed())).toBe("c2");
    log.mark(bytes("c3"));
    expect(commits).toEqual(["c2", "c3"]);
  });
});

describe("client state", () => {
  it("round-trips through JSON and Web Storage", async () => {
    const state: ClientState = {
      cursor: new Uint8Array([0, 255, 7]),
      conversations: { a: { seq: 12n }, b: { seq: 3n, above: [[5n, 6n]] } },
    };
    expect(parseClientState(serializeClientState(state))).toEqual(state);
    const backing = new Map<string, string>();
    const store = createWebStorageStateStore({
      getItem: (k) => backing.get(k) ?? null,
      setItem: (k, v) => backing.set(k, v),
    });
    expect(await store.get()).toBeUndefined();
    await store.set(state);
    expect(await store.get()).toEqual(state);
    expect(() => parseClientState('{"v":2}')).toThrow(TypeError);
  });
});

describe("message id cache", () => {
  it("forgets the least recently seen id first", () => {
    const cache = createMessageIdCache(2);
    cache.add("a");
    cache.add("b");
    expect(cache.has("a")).toBe(true); // a is now the most recent
    cache.add("c");
    expect([cache.has("a"), cache.has("b"), cache.has("c")]).toEqual([true, false, true]);
  });
});

describe("event emitter", () => {
  it("awaits async listeners in emitAsync and reports throwing listeners in emit", async () => {
    const failures: unknown[] = [];
    const emitter = createEventEmitter<{ ping: number }>((error) => failures.push(error));
    const order: string[] = [];
    const off = emitter.on("ping", async (n) => {
      await Promise.resolve();
      order.push(`slow ${n}`);
    });
    emitter.on("ping", (n) => {
      order.push(`fast ${n}`);
    });
    await emitter.emitAsync("ping", 1);
    expect(order).toEqual(["slow 1", "fast 1"]);
    off();
    emitter.on("ping", () => {
      throw new Error("boom");
    });
    emitter.emit("ping", 2);
    expect(failures).toHaveLength(1);
    expect(emitter.listenerCount("ping")).toBe(2);
  });
});
