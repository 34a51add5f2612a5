import { describe, expect, it } from "vitest";
import { createOutboundQueue } from "./outbound-queue.ts";

describe("outbound queue", () => {
  it("hands out everything queued as one batch, in order", async () => {
    const queue = createOutboundQueue<number>(10);
    expect(queue.offer([1, 2])).toBe(true);
    expect(queue.offer([3])).toBe(true);
    expect(await queue.take()).toEqual([1, 2, 3]);
    expect(queue.size).toBe(0);
  });

  it("wakes a waiting reader with what arrives", async () => {
    const queue = createOutboundQueue<number>(10);
    const taken = queue.take();
    queue.offer([4, 5]);
    expect(await taken).toEqual([4, 5]);
  });

  it("refuses a batch that does not fit, whole", () => {
    const queue = createOutboundQueue<number>(3);
    expect(queue.offer([1, 2])).toBe(true);
    expect(queue.offer([3, 4])).toBe(false);
    expect(queue.size).toBe(2);
    queue.force(99);
    queue.force(100);
    expect(queue.size).toBe(4);
  });

  it("drains what is left after end, then reports the end", async () => {
    const queue = createOutboundQueue<number>(3);
    queue.offer([1]);
    queue.end();
    expect(queue.offer([2])).toBe(false);
    queue.force(3);
    expect(await queue.take()).toEqual([1]);
    expect(await queue.take()).toBeUndefined();
    const pending = createOutboundQueue<number>(3);
    const taken = pending.take();
    pending.end();
    expect(await taken).toBeUndefined();
  });

  it("lets a producer wait for room, woken when the reader takes", async () => {
    const queue = createOutboundQueue<number>(4);
    queue.offer([1, 2, 3]);
    let roomy = false;
    const room = queue.waitForRoom(2).then(() => {
      roomy = true;
    });
    await Promise.resolve();
    expect(roomy).toBe(false);
    await queue.take();
    await room;
    expect(roomy).toBe(true);
    expect(queue.clear()).toBe(0);
  });
});
