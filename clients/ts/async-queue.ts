/** A push-driven async iterable: the request side of a bidi stream. */
export type AsyncQueue<T> = AsyncIterable<T> & {
  /** Queues a value; ignored once the queue is ended. Returns false when it was ignored. */
  push(value: T): boolean;
  /** Ends the iteration once the queued values are consumed. */
  end(): void;
  readonly ended: boolean;
};

export function createAsyncQueue<T>(): AsyncQueue<T> {
  const values: T[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  return {
    push(value) {
      if (ended) {
        return false;
      }
      values.push(value);
      notify();
      return true;
    },
    end() {
      ended = true;
      notify();
    },
    get ended() {
      return ended;
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const value = values.shift();
        if (value !== undefined) {
          yield value;
          continue;
        }
        if (ended) {
          return;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    },
  };
}
