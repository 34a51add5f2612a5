/**
 * The frames waiting to be written to one stream: bounded, in order, taken in batches.
 *
 * The writer takes everything queued at once and writes it as one chunk (edge/frame-writer.ts), so
 * the batch goes out in one socket write instead of one per frame; under load, frames queue up
 * while a write waits for the transport and the next batch grows by itself. `offer` is all-or-nothing against the limit, so a caller knows that
 * nothing of a refused batch was queued; `force` bypasses the limit for the few control frames
 * (Drain, Close) that must reach a stream whose queue is full.
 */
export interface OutboundQueue<T> {
  /** Frames waiting (not yet taken). */
  readonly size: number;
  readonly limit: number;
  /** Whether `end` was called. */
  readonly ended: boolean;
  /** Queues every item, or none when they would take the queue past its limit (or it ended). */
  offer(items: readonly T[]): boolean;
  /** Queues one item whatever the limit (unless the queue ended). */
  force(item: T): void;
  /** Drops every item not yet taken; returns how many. */
  clear(): number;
  /** Refuses further items; `take` hands out what is left, then `undefined`. */
  end(): void;
  /** Everything queued, as one batch, waiting while empty; `undefined` once ended and empty. */
  take(): Promise<T[] | undefined>;
  /** Resolves once `count` more items fit under the limit (at once if they do), or the queue ended. */
  waitForRoom(count: number): Promise<void>;
}

export function createOutboundQueue<T>(limit: number): OutboundQueue<T> {
  if (!(limit >= 1)) throw new RangeError("an outbound queue needs a limit of at least 1");
  let items: T[] = [];
  let ended = false;
  let taker: ((batch: T[] | undefined) => void) | undefined;
  const roomWaiters: Array<{ count: number; resolve: () => void }> = [];

  const wakeTaker = () => {
    if (taker === undefined) return;
    if (items.length === 0 && !ended) return;
    const resolve = taker;
    taker = undefined;
    resolve(takeNow());
  };
  const takeNow = (): T[] | undefined => {
    if (items.length === 0) return ended ? undefined : [];
    const batch = items;
    items = [];
    wakeRoomWaiters();
    return batch;
  };
  const wakeRoomWaiters = () => {
    for (let i = 0; i < roomWaiters.length; ) {
      const waiter = roomWaiters[i];
      if (waiter !== undefined && (ended || items.length + waiter.count <= limit)) {
        roomWaiters.splice(i, 1);
        waiter.resolve();
      } else {
        i++;
      }
    }
  };

  return {
    get size() {
      return items.length;
    },
    limit,
    get ended() {
      return ended;
    },
    offer(batch) {
      if (ended || items.length + batch.length > limit) return false;
      if (batch.length === 0) return true;
      items.push(...batch);
      wakeTaker();
      return true;
    },
    force(item) {
      if (ended) return;
      items.push(item);
      wakeTaker();
    },
    clear() {
      const dropped = items.length;
      items = [];
      wakeRoomWaiters();
      return dropped;
    },
    end() {
      ended = true;
      wakeTaker();
      wakeRoomWaiters();
    },
    take() {
      if (taker !== undefined) return Promise.reject(new Error("an outbound queue has one reader"));
      const batch = takeNow();
      if (batch === undefined || batch.length > 0) return Promise.resolve(batch);
      return new Promise((resolve) => {
        taker = resolve;
      });
    },
    waitForRoom(count) {
      if (ended || items.length + count <= limit) return Promise.resolve();
      return new Promise((resolve) => roomWaiters.push({ count: Math.min(count, limit), resolve }));
    },
  };
}
