import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { connectNodeAdapter } from "@connectrpc/connect-node";

/** What connectNodeAdapter returns: a request listener for both http and http2 servers. */
export type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;

// The HTTP/2 connection preface every h2c client sends first (RFC 9113 §3.4).
const h2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface EdgeHttpServer {
  readonly port: number;
  /** Stops accepting connections and waits up to `graceMs` for open requests before cutting them. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Serves `handler` over cleartext HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port.
 *
 * Node's cleartext HTTP/2 server cannot fall back to HTTP/1.1 (that needs TLS + ALPN), and browsers
 * and curl speak HTTP/1.1 while native clients want HTTP/2 for bidirectional streams. So each new
 * connection is routed by its first bytes: the HTTP/2 preface goes to the HTTP/2 server, anything
 * else to the HTTP/1.1 server.
 */
export async function listenHttp(
  handler: NodeHandlerFn,
  host: string,
  port: number,
): Promise<EdgeHttpServer> {
  const h1 = http.createServer(handler);
  const h2 = http2.createServer(
    // Defaults allow only 100 concurrent streams per connection; a browser tab multiplexes more.
    { settings: { maxConcurrentStreams: 1000 } },
    handler,
  );
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  // HTTP/1.1 sockets with a request in progress; the others are idle keep-alives, closed at once
  // on shutdown (the h1 server never listens itself, so it does not track its connections).
  const busy = new Map<net.Socket, number>();
  let closing = false;
  h1.on("request", (req, res) => {
    const socket = req.socket;
    busy.set(socket, (busy.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const left = (busy.get(socket) ?? 1) - 1;
      if (left > 0) busy.set(socket, left);
      else busy.delete(socket);
      if (closing && left <= 0) socket.destroySoon();
    });
  });
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });

  const h2Sockets = new WeakSet<net.Socket>();
  const isHttp2 = (socket: net.Socket) => h2Sockets.has(socket);

  const front = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    let head = Buffer.alloc(0);
    const route = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const decided = head.length >= h2Preface.length || !h2Preface.subarray(0, head.length).equals(head);
      if (!decided) return;
      socket.off("data", route);
      socket.pause();
      socket.unshift(head);
      if (head.subarray(0, h2Preface.length).equals(h2Preface)) {
        // The HTTP/2 session drains the buffered bytes itself; resuming here would drop them.
        h2Sockets.add(socket);
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", route);
    socket.on("error", () => socket.destroy());
  });

  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(port, host, () => {
      front.off("error", reject);
      resolve();
    });
  });
  const address = front.address();
  if (address === null || typeof address === "string") throw new Error("edge server has no TCP address");

  return {
    port: address.port,
    async close(graceMs = 5_000) {
      closing = true;
      const stopped = new Promise<void>((resolve) => front.close(() => resolve()));
      for (const session of sessions) session.close();
      for (const socket of sockets) if (!busy.has(socket) && !isHttp2(socket)) socket.destroySoon();
      const timer = setTimeout(() => {
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      await stopped;
      clearTimeout(timer);
    },
  };
}
