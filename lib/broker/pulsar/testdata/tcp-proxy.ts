// A TCP relay between the adapter and Pulsar for fault tests: it can hold back what Pulsar sends
// (receipts stay unsent while Pulsar has already stored the messages) and cut every connection, as
// a network failure or a restarted Pulsar would.
import type { AddressInfo, Socket } from "node:net";
import { connect, createServer } from "node:net";

export interface TcpProxy {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** Connections open now. */
  readonly connections: number;
  /** From now on, bytes from Pulsar on the connections open now are held, not forwarded. */
  holdReplies(): void;
  /** Destroys every connection (held bytes are lost). New connections go through. */
  cutAll(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const pairs = new Set<{ client: Socket; upstream: Socket; hold: boolean }>();
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    const pair = { client, upstream, hold: false };
    pairs.add(pair);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (!pair.hold) client.write(chunk);
    });
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get connections() {
      return pairs.size;
    },
    holdReplies() {
      for (const pair of pairs) pair.hold = true;
    },
    cutAll() {
      for (const pair of [...pairs]) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
    },
    close() {
      for (const pair of [...pairs]) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
