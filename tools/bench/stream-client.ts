import http2 from "node:http2";
import net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import type { ServerFrame } from "../../gen/parley/edge/v1/frames_pb.ts";
import { SessionRequestSchema, SessionResponseSchema } from "../../gen/parley/edge/v1/session_service_pb.ts";
import { grpcFrame } from "./bench-message.ts";
import type { Stamp } from "./stamp.ts";
import { locateCiphertext, nowMs, readStamp } from "./stamp.ts";

/**
 * HTTP/2 connections of the load generator, spread over several loopback source addresses
 * (127.0.0.1, 127.0.0.2, ...) so tens of thousands of connections do not run out of one address's
 * ephemeral ports. Every socket is tracked, so a scenario can cut them all at once (S5).
 */
export interface ConnectionPool {
  /** The next connection, round-robin; a closed one is replaced. */
  next(): http2.ClientHttp2Session;
  /** Connection number `index` (opened on first use; a closed one is replaced). */
  at(index: number): http2.ClientHttp2Session;
  /** Destroys every socket at once, as a network failure would. */
  dropAll(): number;
  close(): void;
  readonly size: number;
}

export interface PoolOptions {
  readonly connections: number;
  /** How many 127.0.0.x source addresses to use (1..250). */
  readonly sourceAddresses: number;
}

export function sourceAddress(i: number, count: number): string {
  return `127.0.0.${1 + (i % Math.max(1, Math.min(250, count)))}`;
}

/** A net.Socket factory for http2.connect / connect-node's nodeOptions, bound to `localAddress`. */
export function socketFactory(localAddress: string, sockets: Set<net.Socket>) {
  return (authority: URL) => {
    const socket = net.connect({
      host: authority.hostname,
      port: Number(authority.port),
      localAddress,
    });
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    return socket;
  };
}

export function createConnectionPool(url: string, options: PoolOptions): ConnectionPool {
  const sessions: (http2.ClientHttp2Session | undefined)[] = new Array(options.connections);
  const sockets = new Set<net.Socket>();
  let i = 0;
  const open = (index: number) => {
    const session = http2.connect(url, {
      createConnection: socketFactory(sourceAddress(index, options.sourceAddresses), sockets),
      settings: { initialWindowSize: 1 << 20, enablePush: false },
      // The edge allows 1,000 streams per connection; a pool never asks for more.
      peerMaxConcurrentStreams: 1000,
    });
    session.on("error", () => {});
    session.once("connect", () => session.setLocalWindowSize(16 << 20));
    sessions[index] = session;
    return session;
  };
  return {
    get size() {
      return sessions.filter((s) => s !== undefined && !s.closed && !s.destroyed).length;
    },
    next() {
      return this.at(i++);
    },
    at(n) {
      const index = n % options.connections;
      const current = sessions[index];
      if (current !== undefined && !current.closed && !current.destroyed) return current;
      return open(index);
    },
    dropAll() {
      const count = sockets.size;
      for (const socket of [...sockets]) socket.destroy();
      return count;
    },
    close() {
      for (const session of sessions) session?.close();
    },
  };
}

export interface StreamEnd {
  /** gRPC status code ("0" is OK), or "RST_<code>" / "transport" when there was none. */
  readonly code: string;
  readonly message: string;
}

export interface BenchStream {
  readonly device: number;
  /** Resolves with the first frame (Parley's ServerReady; the baselines send a ready frame too). */
  readonly ready: Promise<ServerFrame | undefined>;
  readonly ended: Promise<StreamEnd>;
  /** Frames that were not messages (heartbeats, closes), by ServerFrame field number. */
  readonly otherFrames: Map<number, number>;
  close(): void;
}

export interface OpenStreamOptions {
  readonly device: number;
  /** Parley: the device's bearer token. The baselines route by `x-bench-device` alone. */
  readonly token?: string;
  /** Send a ClientHello with an empty cursor first (Parley then goes live at once). */
  readonly hello?: boolean;
  /** Client heartbeat interval when the first frame names none (the baselines). 0: none. */
  readonly heartbeatMs?: number;
  readonly onStamp?: (stamp: Stamp, at: number) => void;
  /**
   * Parley: acknowledge each message frame as DELIVERED up to its seq, as the SDK's auto-ack does,
   * so the mesh does its whole work per delivery (receipts) while the client stays minimal.
   */
  readonly ack?: boolean;
  /** Path of the bidi method. */
  readonly path?: string;
}

const SESSION_PATH = "/parley.edge.v1.SessionService/Session";

function ackFrame(frameId: bigint, conversationId: string, upToSeq: bigint): Buffer {
  const request = {
    frame: {
      frameId,
      body: {
        case: "ack" as const,
        value: {
          conversationId,
          kind: ReceiptKind.DELIVERED,
          target: { case: "upToSeq" as const, value: upToSeq },
        },
      },
    },
  };
  return grpcFrame(toBinary(SessionRequestSchema, create(SessionRequestSchema, request)));
}

function clientFrame(frameId: bigint, body: "hello" | "heartbeat"): Buffer {
  const request =
    body === "hello"
      ? { frame: { frameId, body: { case: "hello" as const, value: { clientVersion: "parley-bench/1" } } } }
      : { frame: { frameId, body: { case: "heartbeat" as const, value: { idle: false } } } };
  return grpcFrame(toBinary(SessionRequestSchema, create(SessionRequestSchema, request)));
}

/**
 * One device's Session stream, spoken directly on an HTTP/2 session (gRPC framing): the cheapest
 * client there is, so the numbers are the server's. Message frames are not decoded: their stamp is
 * read where the ciphertext lies (stamp.ts). Other frames are decoded; the first one's heartbeat
 * interval sets the client's heartbeats, as the SDK does.
 */
export function openBenchStream(session: http2.ClientHttp2Session, options: OpenStreamOptions): BenchStream {
  const headers: http2.OutgoingHttpHeaders = {
    ":method": "POST",
    ":path": options.path ?? SESSION_PATH,
    "content-type": "application/grpc+proto",
    te: "trailers",
    "x-bench-device": String(options.device),
  };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  const otherFrames = new Map<number, number>();
  let frameId = 1n;
  let heartbeat: NodeJS.Timeout | undefined;
  let resolveReady: (frame: ServerFrame | undefined) => void = () => {};
  const ready = new Promise<ServerFrame | undefined>((resolve) => {
    resolveReady = resolve;
  });
  let resolveEnded: (end: StreamEnd) => void = () => {};
  const ended = new Promise<StreamEnd>((resolve) => {
    resolveEnded = resolve;
  });
  let status: StreamEnd | undefined;
  let first = true;

  let stream: http2.ClientHttp2Stream;
  try {
    stream = session.request(headers, { endStream: false });
  } catch (err) {
    resolveReady(undefined);
    resolveEnded({ code: "transport", message: err instanceof Error ? err.message : String(err) });
    return { device: options.device, ready, ended, otherFrames, close() {} };
  }
  const startHeartbeats = (intervalMs: number) => {
    if (intervalMs <= 0 || heartbeat !== undefined) return;
    // Spread over the interval, so 100K devices do not all beat in the same tick.
    const first = setTimeout(() => {
      beat();
      heartbeat = setInterval(beat, intervalMs);
      heartbeat.unref();
    }, Math.random() * intervalMs);
    first.unref();
    heartbeat = first;
  };
  const beat = () => {
    if (!stream.closed && !stream.destroyed) stream.write(clientFrame(frameId++, "heartbeat"));
  };
  if (options.hello === true) stream.write(clientFrame(frameId++, "hello"));

  let pending: Buffer | undefined;
  const onFrame = (bytes: Buffer, start: number, end: number) => {
    const at = nowMs();
    const where = locateCiphertext(bytes, start, end);
    if (where.body === 2 && where.length > 0) {
      const stamp = readStamp(bytes, where.offset, where.length);
      if (stamp !== undefined) options.onStamp?.(stamp, at);
      if (options.ack === true) {
        // Decoded only to acknowledge: the ack names the conversation and the seq.
        const frame = fromBinary(SessionResponseSchema, bytes.subarray(start, end)).frame;
        const message = frame?.body.case === "message" ? frame.body.value.message : undefined;
        if (message !== undefined && message.seq > 0n && !stream.closed && !stream.destroyed)
          stream.write(ackFrame(frameId++, message.conversationId, message.seq));
      }
    } else {
      otherFrames.set(where.body, (otherFrames.get(where.body) ?? 0) + 1);
    }
    if (first) {
      first = false;
      const frame = fromBinary(SessionResponseSchema, bytes.subarray(start, end)).frame;
      resolveReady(frame);
      const interval =
        frame?.body.case === "ready" && frame.body.value.heartbeatInterval !== undefined
          ? Number(frame.body.value.heartbeatInterval.seconds) * 1000 +
            frame.body.value.heartbeatInterval.nanos / 1e6
          : (options.heartbeatMs ?? 0);
      startHeartbeats(interval);
    }
  };
  stream.on("data", (chunk: Buffer) => {
    const buffer = pending === undefined ? chunk : Buffer.concat([pending, chunk]);
    let pos = 0;
    while (buffer.length - pos >= 5) {
      const length = buffer.readUInt32BE(pos + 1);
      if (buffer.length - pos < 5 + length) break;
      onFrame(buffer, pos + 5, pos + 5 + length);
      pos += 5 + length;
    }
    // A partial frame is copied out, so it does not keep the whole chunk alive.
    pending = pos === buffer.length ? undefined : Buffer.from(buffer.subarray(pos));
  });
  const statusOf = (h: http2.IncomingHttpHeaders): StreamEnd | undefined => {
    const code = h["grpc-status"];
    if (code === undefined) return undefined;
    const message = h["grpc-message"];
    return { code: String(code), message: decodeURIComponent(String(message ?? "")) };
  };
  stream.on("response", (h) => {
    status = statusOf(h) ?? status;
  });
  stream.on("trailers", (h) => {
    status = statusOf(h) ?? status;
  });
  stream.on("error", () => {});
  stream.on("close", () => {
    clearTimeout(heartbeat);
    clearInterval(heartbeat);
    resolveReady(undefined);
    resolveEnded(
      status ?? {
        code: stream.rstCode !== undefined && stream.rstCode !== 0 ? `RST_${stream.rstCode}` : "transport",
        message: "",
      },
    );
  });
  return {
    device: options.device,
    ready,
    ended,
    otherFrames,
    close() {
      clearTimeout(heartbeat);
      clearInterval(heartbeat);
      if (!stream.closed && !stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
    },
  };
}
