/** A listener may be async; `emitAsync` awaits it, `emit` only reports its failure. */
export type Listener<T> = (payload: T) => void | Promise<void>;

export type EventEmitter<Events extends Record<string, unknown>> = {
  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void;
  /** Calls every listener; a listener that throws or rejects is reported to `onListenerError`. */
  emit<K extends keyof Events>(event: K, payload: Events[K]): void;
  /** Calls every listener in turn, awaiting each; the first failure rejects (the rest are skipped). */
  emitAsync<K extends keyof Events>(event: K, payload: Events[K]): Promise<void>;
  listenerCount(event: keyof Events): number;
};

/**
 * A tiny typed event emitter: no dependency on Node's `events`, so it runs in browsers.
 * Listeners are called in the order they were added; removing one during an emit is safe.
 */
export function createEventEmitter<Events extends Record<string, unknown>>(
  onListenerError: (error: unknown, event: keyof Events) => void = () => {},
): EventEmitter<Events> {
  const listeners = new Map<keyof Events, Set<Listener<never>>>();
  const snapshot = <K extends keyof Events>(event: K) =>
    [...(listeners.get(event) ?? [])] as Listener<Events[K]>[];
  return {
    on(event, listener) {
      let set = listeners.get(event);
      if (set === undefined) {
        set = new Set();
        listeners.set(event, set);
      }
      set.add(listener as Listener<never>);
      return () => {
        set.delete(listener as Listener<never>);
      };
    },
    emit(event, payload) {
      for (const listener of snapshot(event)) {
        try {
          const result = listener(payload);
          if (result instanceof Promise) {
            result.catch((error: unknown) => onListenerError(error, event));
          }
        } catch (error) {
          onListenerError(error, event);
        }
      }
    },
    async emitAsync(event, payload) {
      for (const listener of snapshot(event)) {
        await listener(payload);
      }
    },
    listenerCount(event) {
      return listeners.get(event)?.size ?? 0;
    },
  };
}
