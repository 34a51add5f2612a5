import type { Logger } from "../../../../lib/logging.ts";
import type { HistoryStore } from "../../domain/history-store.ts";

export interface RetentionSweep {
  /** Sweeps now (tests, or after a long pause); resolves to the rows removed. */
  runNow(): Promise<number>;
  /** Stops the timer and waits for a sweep in progress. */
  stop(): Promise<void>;
}

/**
 * The embedded profile's retention: every `intervalMs` (default 60 s) the store removes what has
 * expired. Reads already hide expired rows, so the sweep only reclaims space; Cassandra does the
 * same with TTLs and needs no sweep.
 */
export function startRetentionSweep(
  store: Pick<HistoryStore, "sweepExpired">,
  options: { readonly logger: Logger; readonly intervalMs?: number; readonly now?: () => Date },
): RetentionSweep {
  const now = options.now ?? (() => new Date());
  let running: Promise<number> | undefined;
  const runNow = () => {
    running ??= store
      .sweepExpired(now())
      .then((removed) => {
        if (removed > 0) options.logger.info({ removed }, "history retention sweep");
        return removed;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  };
  const timer = setInterval(() => {
    runNow().catch((err: unknown) => options.logger.warn({ err }, "history retention sweep failed"));
  }, options.intervalMs ?? 60_000);
  timer.unref();
  return {
    runNow,
    async stop() {
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}
