import type { ClientState, ClientStateStore } from "./client-state.ts";

export type StateSaver = {
  /** Saves the current snapshot soon; calls made while a save runs coalesce into one more save. */
  schedule(): void;
  /** Resolves once everything scheduled so far is saved (or failed). */
  flush(): Promise<void>;
};

/** Writes snapshots to the store one at a time, never two `set` calls at once. */
export function createStateSaver(
  store: ClientStateStore,
  snapshot: () => ClientState,
  onError: (error: unknown) => void,
): StateSaver {
  let dirty = false;
  let saving: Promise<void> | undefined;
  const drain = async () => {
    try {
      while (dirty) {
        dirty = false;
        try {
          await store.set(snapshot());
        } catch (error) {
          // Keep it dirty: the next change (or flush) tries again, instead of spinning here.
          dirty = true;
          onError(error);
          return;
        }
      }
    } finally {
      saving = undefined;
    }
  };
  const schedule = () => {
    dirty = true;
    // Start on a microtask so a burst of changes costs one write.
    saving ??= Promise.resolve().then(drain);
  };
  return {
    schedule,
    async flush() {
      await saving;
      if (dirty) {
        schedule();
        await saving;
      }
    },
  };
}
