import type { LatencyHistogram } from "./latency.ts";
import { createLatencyHistogram } from "./latency.ts";
import type { Stamp } from "./stamp.ts";
import { nowMs } from "./stamp.ts";

/**
 * Every delivery the load generator saw, by message sequence number: which were shown (once, or
 * more than once), and send -> display latency per window of sequence numbers (a rate step, a
 * surge). Sequence numbers are unique in a run and handed out in windows, one window at a time.
 */
export interface DeliveryLog {
  /** Starts a window at `firstSeq` (the previous one must be closed). */
  open(name: string, firstSeq: number): DeliveryWindow;
  /** A message was shown (or, for fan-out, reached one more device: see `expectPerSeq`). */
  record(stamp: Stamp, at?: number): void;
  /** Windows so far, oldest first. */
  readonly windows: readonly DeliveryWindow[];
}

export interface DeliveryWindow {
  readonly name: string;
  readonly firstSeq: number;
  /** One past the last seq of the window, once closed. */
  endSeq: number | undefined;
  /** Deliveries each seq must reach (1 for 1:1; the devices of a group for fan-out). */
  expectPerSeq: number;
  /** Deliveries not expected because the send was refused (counted as errors instead). */
  refused: number;
  readonly latency: LatencyHistogram;
  /** First deliveries of a (seq, device). */
  delivered: number;
  /** Deliveries of a (seq, device) already seen: "never shown twice" broken. */
  duplicates: number;
  firstDeliveryAt: number;
  lastDeliveryAt: number;
  /** Per seq: the latest first delivery among its devices (fan-out: "every device has it"). */
  readonly completion: Map<number, { count: number; sentAt: number; lastAt: number }>;
  /** How many deliveries the window expects once closed. */
  expected(): number;
  /** Expected deliveries not seen. */
  missing(): number;
}

export function createDeliveryLog(options: { trackCompletion?: boolean } = {}): DeliveryLog {
  const windows: DeliveryWindow[] = [];
  // Seen (seq, target) pairs: seq * 2^20 + target would overflow for long runs; a Set per seq is
  // only kept for fan-out, a bit per seq for 1:1.
  const seenOne = new Set<number>();
  const seenMany = new Map<number, Set<number>>();

  const windowOf = (seq: number): DeliveryWindow | undefined => {
    for (let i = windows.length - 1; i >= 0; i--) {
      const w = windows[i];
      if (w !== undefined && seq >= w.firstSeq && (w.endSeq === undefined || seq < w.endSeq)) return w;
    }
    return undefined;
  };

  return {
    windows,
    open(name, firstSeq) {
      const window: DeliveryWindow = {
        name,
        firstSeq,
        endSeq: undefined,
        expectPerSeq: 1,
        refused: 0,
        latency: createLatencyHistogram(),
        delivered: 0,
        duplicates: 0,
        firstDeliveryAt: Number.NaN,
        lastDeliveryAt: Number.NaN,
        completion: new Map(),
        expected() {
          return window.endSeq === undefined
            ? Number.NaN
            : (window.endSeq - firstSeq) * window.expectPerSeq - window.refused;
        },
        missing() {
          return window.expected() - window.delivered;
        },
      };
      windows.push(window);
      return window;
    },
    record(stamp, at = nowMs()) {
      const window = windowOf(stamp.seq);
      if (window === undefined) return;
      let fresh: boolean;
      if (window.expectPerSeq === 1) {
        fresh = !seenOne.has(stamp.seq);
        if (fresh) seenOne.add(stamp.seq);
      } else {
        let targets = seenMany.get(stamp.seq);
        if (targets === undefined) {
          targets = new Set();
          seenMany.set(stamp.seq, targets);
        }
        fresh = !targets.has(stamp.target);
        if (fresh) targets.add(stamp.target);
      }
      if (!fresh) {
        window.duplicates++;
        return;
      }
      window.delivered++;
      window.latency.record(at - stamp.sentAt);
      if (!(window.firstDeliveryAt <= at)) window.firstDeliveryAt = at;
      if (!(window.lastDeliveryAt >= at)) window.lastDeliveryAt = at;
      if (options.trackCompletion === true) {
        const entry = window.completion.get(stamp.seq) ?? { count: 0, sentAt: stamp.sentAt, lastAt: at };
        entry.count++;
        entry.lastAt = Math.max(entry.lastAt, at);
        window.completion.set(stamp.seq, entry);
      }
    },
  };
}

/** Resolves once `done()` holds (checked every 50 ms) or after `timeoutMs`; true if it held. */
export async function waitUntil(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() >= until) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}
