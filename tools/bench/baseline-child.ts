// The baselines of issue 8, each in its own process so its CPU and memory are measured apart:
//
//   raw:   a minimal node:http2 server that writes gRPC-framed SessionResponse messages down one
//          stream per device: pre-encoded templates with the stamp patched in, one socket write
//          per device per tick. No library, no validation, no persistence: the speed of light.
//   relay: the same push through connect-node (a SessionService.Session handler yielding frames,
//          protobuf-es encoding each one), no validation, no persistence.
//
// The load generator's devices connect with the header `x-bench-device: <index>`; the parent
// then asks for pushes over IPC ("unicast" at a rate, "broadcast" to every device) and reads the
// stamps on the client side.
//
//   node tools/bench/baseline-child.ts raw|relay
import http2 from "node:http2";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ServerFrameSchema } from "../../gen/parley/edge/v1/frames_pb.ts";
import type { SessionResponseSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { SessionService } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { benchFrame, grpcFrame, messageTemplate, readyFrame } from "./bench-message.ts";
import { memoryAfterGc, serveParent } from "./child.ts";
import { nowMs, writeStamp } from "./stamp.ts";

const kind = process.argv[2];
if (kind !== "raw" && kind !== "relay") throw new Error("usage: baseline-child.ts raw|relay");

/** The same limit the edge sets (edge/http-server.ts). */
const MAX_CONCURRENT_STREAMS = 1000;
const HOST_ID = `baseline-${kind}`;

type Response = MessageInitShape<typeof SessionResponseSchema>;

/** One device's live stream: how to hand it the messages of one tick. */
interface Slot {
  readonly device: number;
  /** Writes (raw) or queues (relay) these messages as one batch. */
  deliver(seqs: readonly number[], sentAt: number): void;
}

const slots = new Map<number, Slot>();
/** Devices with a live stream, in connection order: unicast goes round-robin over them. */
let order: number[] = [];
let orderDirty = false;
const liveDevices = () => {
  if (orderDirty) {
    order = [...slots.keys()].sort((a, b) => a - b);
    orderDirty = false;
  }
  return order;
};
const setSlot = (slot: Slot) => {
  slots.set(slot.device, slot);
  orderDirty = true;
};
const dropSlot = (slot: Slot) => {
  if (slots.get(slot.device) === slot) {
    slots.delete(slot.device);
    orderDirty = true;
  }
};

let payloadBytes = 100;
let template = messageTemplate(payloadBytes);
const readyBytes = grpcFrame(encodeReady());

function encodeReady(): Uint8Array {
  // SessionResponse{frame=1: ServerFrame} as bytes: tag 0x0a, length, the frame.
  const frame = toBinary(ServerFrameSchema, readyFrame(HOST_ID));
  const header = [0x0a];
  let length = frame.length;
  while (length >= 0x80) {
    header.push((length & 0x7f) | 0x80);
    length = Math.floor(length / 128);
  }
  header.push(length);
  const out = new Uint8Array(header.length + frame.length);
  out.set(header, 0);
  out.set(frame, header.length);
  return out;
}

function deviceOf(value: string | string[] | null | undefined): number {
  const n = Number(Array.isArray(value) ? value[0] : value);
  return Number.isInteger(n) && n >= 0 ? n : -1;
}

function startRaw(): http2.Http2Server {
  const server = http2.createServer({ settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS } });
  server.on("stream", (stream, headers) => {
    const device = deviceOf(headers["x-bench-device"]);
    stream.on("error", () => {});
    if (device < 0) {
      stream.respond({ ":status": 400 }, { endStream: true });
      return;
    }
    stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    // Client frames (hello, heartbeats) are read and dropped.
    stream.on("data", () => {});
    stream.write(readyBytes);
    const slot: Slot = {
      device,
      deliver(seqs, sentAt) {
        const { bytes, stampOffset } = template;
        const out = Buffer.allocUnsafe(bytes.length * seqs.length);
        let at = 0;
        for (const seq of seqs) {
          bytes.copy(out, at);
          writeStamp(out, at + stampOffset, sentAt, seq, device);
          at += bytes.length;
        }
        stream.write(out);
      },
    };
    setSlot(slot);
    stream.once("close", () => dropSlot(slot));
  });
  return server;
}

function startRelay(): http2.Http2Server {
  const routes = (router: ConnectRouter) =>
    router.service(SessionService, {
      async *session(requests, ctx) {
        const device = deviceOf(ctx.requestHeader.get("x-bench-device"));
        let queue: Response[] = [];
        let wake: (() => void) | undefined;
        let done = false;
        const slot: Slot = {
          device,
          deliver(seqs) {
            for (const seq of seqs) queue.push(benchFrame(seq, device, payloadBytes, crypto.randomUUID()));
            const w = wake;
            wake = undefined;
            w?.();
          },
        };
        // Client frames are read and dropped; the stream ends when the client goes.
        void (async () => {
          try {
            for await (const _ of requests) {
              // dropped
            }
          } catch {
            // reset by the client
          }
        })();
        const stop = () => {
          done = true;
          const w = wake;
          wake = undefined;
          w?.();
        };
        ctx.signal.addEventListener("abort", stop, { once: true });
        setSlot(slot);
        try {
          yield { frame: readyFrame(HOST_ID) };
          while (!done) {
            if (queue.length === 0) {
              await new Promise<void>((resolve) => {
                wake = resolve;
              });
              continue;
            }
            const batch = queue;
            queue = [];
            // Back to back, as the edge writes its batches: one turn of the event loop.
            for (const response of batch) yield response;
          }
        } finally {
          dropSlot(slot);
          ctx.signal.removeEventListener("abort", stop);
        }
      },
    });
  return http2.createServer(
    { settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS } },
    connectNodeAdapter({ routes }),
  );
}

/** Sends `count` messages spread over the live devices, stamping them now; returns the next seq. */
function pushTick(nextSeq: number, count: number, cursor: { i: number }): number {
  const devices = liveDevices();
  if (devices.length === 0 || count <= 0) return nextSeq;
  const perDevice = new Map<number, number[]>();
  let seq = nextSeq;
  for (let k = 0; k < count; k++) {
    const device = devices[cursor.i % devices.length] as number;
    cursor.i++;
    let list = perDevice.get(device);
    if (list === undefined) {
      list = [];
      perDevice.set(device, list);
    }
    list.push(seq++);
  }
  const sentAt = nowMs();
  for (const [device, seqs] of perDevice) slots.get(device)?.deliver(seqs, sentAt);
  return seq;
}

/** Unicast at `rate` messages/s for `durationMs`, in ticks: each tick sends what is due. */
async function unicast(command: Record<string, unknown>) {
  const rate = Number(command.rate);
  const durationMs = Number(command.durationMs);
  const tickMs = Number(command.tickMs ?? 10);
  const firstSeq = Number(command.firstSeq);
  let next = firstSeq;
  const cursor = { i: 0 };
  const started = performance.now();
  await new Promise<void>((resolve) => {
    const tick = () => {
      const elapsed = Math.min(performance.now() - started, durationMs);
      const due = Math.floor((rate * elapsed) / 1000) - (next - firstSeq);
      next = pushTick(next, due, cursor);
      if (elapsed >= durationMs) {
        clearInterval(timer);
        resolve();
      }
    };
    const timer = setInterval(tick, tickMs);
  });
  return { endSeq: next, sent: next - firstSeq, elapsedMs: performance.now() - started };
}

/** `sends` messages, each to every live device, `intervalMs` apart; seq per send. */
async function broadcast(command: Record<string, unknown>) {
  const sends = Number(command.sends);
  const intervalMs = Number(command.intervalMs);
  const firstSeq = Number(command.firstSeq);
  const devices = liveDevices().length;
  for (let i = 0; i < sends; i++) {
    const sentAt = nowMs();
    for (const slot of slots.values()) slot.deliver([firstSeq + i], sentAt);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  return { endSeq: firstSeq + sends, sent: sends, devices };
}

const server = kind === "raw" ? startRaw() : startRelay();
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
const address = server.address();
if (address === null || typeof address === "string") throw new Error("no TCP address");

serveParent(
  {
    memory: (command) => memoryAfterGc(command.heapSnapshot),
    streams: () => ({ count: slots.size }),
    configure: (command) => {
      payloadBytes = Number(command.payloadBytes ?? payloadBytes);
      template = messageTemplate(payloadBytes);
      return {};
    },
    unicast,
    broadcast,
  },
  async () => {
    server.close();
  },
);
process.send?.({ type: "ready", url: `http://127.0.0.1:${address.port}`, kind });
