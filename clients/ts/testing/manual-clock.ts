import type { Clock, TimerHandle } from "../clock.ts";

export type ManualClock = Clock & {
  /** Moves time forward, firing every timer that falls due (in order, including timers they set). */
  advance(ms: number): void;
  /** The delays (from now) of the timers still pending, soonest first. */
  pending(): number[];
};

/** A clock that only moves when told to, so backoff and heartbeats are tested without waiting. */
export function createManualClock(start = 0): ManualClock {
  let now = start;
  let nextId = 1;
  const timers = new Map<number, { at: number; callback: () => void }>();
  return {
    now: () => now,
    setTimeout(callback, ms) {
      const id = nextId++;
      timers.set(id, { at: now + Math.max(0, ms), callback });
      return id;
    },
    clearTimeout(handle: TimerHandle) {
      timers.delete(handle as number);
    },
    advance(ms) {
      const target = now + ms;
      for (;;) {
        const next = [...timers.entries()]
          .filter(([, t]) => t.at <= target)
          .sort(([a, x], [b, y]) => x.at - y.at || a - b)[0];
        if (next === undefined) {
          break;
        }
        now = Math.max(now, next[1].at);
        timers.delete(next[0]);
        next[1].callback();
      }
      now = target;
    },
    pending() {
      return [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b);
    },
  };
}
