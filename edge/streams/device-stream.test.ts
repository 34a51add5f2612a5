import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { CloseReason, type ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { SyncResponseSchema } from "../../gen/parley/history/v1/history_service_pb.ts";
import { ParleyError } from "../../lib/errors.ts";
import { DeviceStream, frame } from "./device-stream.ts";

const device = { userId: "alice", deviceId: "phone" } as DeviceStream["device"];
const message = (n: number) =>
  frame({
    case: "message",
    value: { message: { messageId: `m${n}`, seq: BigInt(n) }, cursor: new TextEncoder().encode(`c${n}`) },
  });

function stream(options: { queueLimit?: number } = {}) {
  const closed: DeviceStream[] = [];
  const s = new DeviceStream({
    id: 1,
    kind: "subscribe",
    device,
    expiresAt: new Date(Date.now() + 3_600_000),
    heartbeatIntervalMs: 60_000,
    queueLimit: options.queueLimit ?? 100,
    maxBadFramesPerMinute: 2,
    closeGraceMs: 1_000,
    onClose: (c) => closed.push(c),
  });
  return { s, closed };
}

/** Everything the stream writes until it ends, and how it ends. */
async function drain(s: DeviceStream): Promise<{ frames: ServerFrame[]; error: unknown }> {
  const frames: ServerFrame[] = [];
  try {
    for await (const f of s.frames()) frames.push(f);
    return { frames, error: undefined };
  } catch (error) {
    return { frames, error };
  }
}

const describeFrame = (f: ServerFrame) =>
  f.body.case === "message" ? `m${f.body.value.message?.seq}` : (f.body.case ?? "?");

describe("device stream", () => {
  it("holds pushes until live, then writes them after the replies", async () => {
    const { s } = stream();
    s.reply(frame({ case: "heartbeat", value: {} }));
    expect(s.push([message(1)])).toBe("pushed");
    expect(s.queued).toBe(1);
    s.goLive();
    s.end();
    expect((await drain(s)).frames.map(describeFrame)).toEqual(["heartbeat", "m1"]);
  });

  it("replays pages, releases held pushes without the replayed ones, and remembers what it carried", async () => {
    const { s } = stream();
    const pages = [
      create(SyncResponseSchema, {
        items: [1, 2].map((n) => ({
          cursor: new TextEncoder().encode(`c${n}`),
          item: { case: "message" as const, value: { messageId: `m${n}`, seq: BigInt(n) } },
        })),
        more: true,
        nextCursor: new TextEncoder().encode("c2"),
      }),
      create(SyncResponseSchema, {
        items: [
          {
            cursor: new TextEncoder().encode("c3"),
            item: { case: "message", value: { messageId: "m3", seq: 3n } },
          },
        ],
        more: false,
      }),
    ];
    const asked: string[] = [];
    await s.resume(new TextEncoder().encode("c0"), async (cursor, _size, fromOldestUnacknowledged) => {
      asked.push(`${new TextDecoder().decode(cursor)}${fromOldestUnacknowledged ? "+oldest" : ""}`);
      // Live pushes land while the replay runs.
      if (asked.length === 2) s.push([message(2), message(4)]);
      return pages[asked.length - 1] as (typeof pages)[number];
    });
    // Only the first page starts at the oldest unacknowledged message; the rest follow the cursors.
    expect(asked).toEqual(["c0+oldest", "c2"]);
    // A late retry of an old push is dropped too.
    s.push([message(3), message(5)]);
    s.end();
    expect((await drain(s)).frames.map(describeFrame)).toEqual(["m1", "m2", "m3", "m4", "m5"]);
  });

  it("holds live pushes apart from a replay that fills the queue, and releases them as the client reads", async () => {
    const { s, closed } = stream({ queueLimit: 4 });
    const page = (from: number, more: boolean) =>
      create(SyncResponseSchema, {
        items: [from, from + 1].map((n) => ({
          cursor: new TextEncoder().encode(`c${n}`),
          item: { case: "message" as const, value: { messageId: `m${n}`, seq: BigInt(n) } },
        })),
        more,
        nextCursor: new TextEncoder().encode(`c${from + 1}`),
      });
    const written = drain(s);
    let calls = 0;
    const replay = s.resume(new TextEncoder().encode("c0"), async () => {
      calls++;
      if (calls === 2) expect(s.push([message(5), message(6), message(7)])).toBe("pushed");
      return calls === 1 ? page(1, true) : page(3, false);
    });
    await replay;
    s.end();
    expect(closed).toEqual([s]);
    expect((await written).frames.map(describeFrame)).toEqual(["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
  });

  it("drops what it held when the replay fails, and rethrows (a held push would skip the unreplayed pages)", async () => {
    const { s } = stream();
    const replay = s.resume(new Uint8Array([1]), async (cursor) => {
      if (cursor[0] === 1) {
        return create(SyncResponseSchema, {
          items: [
            { cursor: new Uint8Array([2]), item: { case: "message", value: { messageId: "m1", seq: 1n } } },
          ],
          nextCursor: new Uint8Array([2]),
          more: true,
        });
      }
      throw new ParleyError("unavailable", "X", "down");
    });
    s.push([message(9)]);
    await expect(replay).rejects.toThrow("down");
    s.end();
    expect((await drain(s)).frames.map(describeFrame)).toEqual(["m1"]);
  });

  it("closes a stream that falls behind, dropping what waits, and says OVERLOADED", async () => {
    const { s, closed } = stream({ queueLimit: 3 });
    s.goLive();
    expect(s.push([message(1), message(2)])).toBe("pushed");
    expect(s.push([message(3), message(4)])).toBe("overloaded");
    expect(closed).toEqual([s]);
    expect(s.push([message(5)])).toBe("closed");
    const { frames, error } = await drain(s);
    expect(frames.map(describeFrame)).toEqual(["close"]);
    expect(frames[0]?.body.value).toMatchObject({ reason: CloseReason.RATE_LIMITED });
    expect(error).toMatchObject({ code: "resource_exhausted", reason: "STREAM_OVERLOADED" });
  });

  it("writes what was queued before a close, then the Close frame, then ends with its code", async () => {
    const { s } = stream();
    s.goLive();
    s.push([message(1)]);
    s.close({
      reason: CloseReason.REPLACED,
      code: "aborted",
      errorReason: "STREAM_REPLACED",
      message: "replaced",
    });
    s.close({
      reason: CloseReason.SHUTDOWN,
      code: "unavailable",
      errorReason: "SHUTDOWN",
      message: "second close loses",
    });
    const { frames, error } = await drain(s);
    expect(frames.map(describeFrame)).toEqual(["m1", "close"]);
    expect(error).toMatchObject({ code: "aborted", reason: "STREAM_REPLACED" });
  });

  it("drains with the cursor of the last message it queued", async () => {
    const { s } = stream();
    s.goLive();
    s.push([message(1), message(2)]);
    s.drain("http://elsewhere", 60_000, 1_000);
    s.end();
    const { frames } = await drain(s);
    const drainFrame = frames.at(-1);
    expect(drainFrame?.body.case).toBe("drain");
    expect(drainFrame?.body.value).toMatchObject({
      reconnectUrl: "http://elsewhere",
      resumeCursor: new TextEncoder().encode("c2"),
    });
  });

  it("filters presence by the stream's interest", async () => {
    const { s } = stream();
    s.goLive();
    s.setPresenceInterest(["bob"]);
    s.push([
      frame({ case: "presence", value: { userId: "carol" } }),
      frame({ case: "presence", value: { userId: "bob" } }),
    ]);
    s.end();
    const { frames } = await drain(s);
    expect(frames.map((f) => (f.body.case === "presence" ? f.body.value.userId : f.body.case))).toEqual([
      "bob",
    ]);
  });
});
