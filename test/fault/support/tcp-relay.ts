// A loopback TCP relay the fault tests control: the "network" between devices and the edges. It
// forwards each connection to one of its targets (round-robin, skipping targets that refuse, like
// an L4 load balancer in front of the edge hosts), and can fail the way networks do: cut every
// connection (RST), refuse new ones, mute the client's direction (a half-open partition) or
// black-hole traffic (bytes vanish, sockets stay open, as in a partition), then heal.
import type { AddressInfo, Socket } from "node:net";
import { connect, createServer } from "node:net";

export interface RelayTarget {
  readonly host: string;
  readonly port: number;
}

/** `mute`: the half-open partition: what the client sends vanishes, what it is sent still arrives. */
export type RelayMode = "open" | "refuse" | "mute" | "blackhole";

export interface TcpRelay {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** Connections relayed now. */
  readonly connections: number;
  /** Connections accepted since the start (a reconnect storm shows here). */
  readonly accepted: number;
  readonly mode: RelayMode;
  /** Destroys every relayed connection, both sides (new connections follow the mode). */
  cutAll(): void;
  /** New connections are reset at once; open ones carry on. */
  refuse(): void;
  /** What clients send, on open and new connections, is dropped; what they are sent still arrives. */
  mute(): void;
  /** Every byte, on open and new connections, is dropped; nobody is told. */
  blackhole(): void;
  /** Back to forwarding. Muted and black-holed connections are reset: their streams lost bytes mid-frame. */
  heal(): void;
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  upstream: Socket | undefined;
  /** Bytes from the client are dropped. */
  muted: boolean;
  /** Bytes from the target are dropped too. */
  blackholed: boolean;
}

/** A relay to `targets()` (asked per connection, so a target list can change). */
export async function startTcpRelay(targets: () => readonly RelayTarget[]): Promise<TcpRelay> {
  const pairs = new Set<Pair>();
  let mode: RelayMode = "open";
  let turn = 0;
  let accepted = 0;

  const destroy = (pair: Pair) => {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  };

  const server = createServer((client) => {
    accepted += 1;
    if (mode === "refuse") {
      client.resetAndDestroy();
      return;
    }
    const pair: Pair = {
      client,
      upstream: undefined,
      muted: mode === "mute" || mode === "blackhole",
      blackholed: mode === "blackhole",
    };
    pairs.add(pair);
    const pending: Buffer[] = [];
    client.on("data", (chunk: Buffer) => {
      if (pair.muted) return;
      if (pair.upstream?.readyState === "open") pair.upstream.write(chunk);
      else pending.push(chunk);
    });
    client.on("close", () => destroy(pair));
    client.on("error", () => destroy(pair));
    if (pair.blackholed) return;
    const list = targets();
    const tryTarget = (left: number) => {
      if (left === 0 || !pairs.has(pair)) {
        destroy(pair);
        return;
      }
      const target = list[turn++ % list.length] as RelayTarget;
      const upstream = connect(target.port, target.host);
      upstream.once("connect", () => {
        if (!pairs.has(pair)) {
          upstream.destroy();
          return;
        }
        pair.upstream = upstream;
        for (const chunk of pending.splice(0)) if (!pair.muted) upstream.write(chunk);
        upstream.on("data", (chunk: Buffer) => {
          if (!pair.blackholed) client.write(chunk);
        });
        upstream.on("close", () => destroy(pair));
      });
      upstream.once("error", () => {
        if (pair.upstream === upstream) destroy(pair);
        else tryTarget(left - 1);
      });
    };
    if (list.length === 0) destroy(pair);
    else tryTarget(list.length);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get connections() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    get mode() {
      return mode;
    },
    cutAll() {
      for (const pair of [...pairs]) {
        pair.client.resetAndDestroy();
        destroy(pair);
      }
    },
    refuse() {
      mode = "refuse";
    },
    mute() {
      mode = "mute";
      for (const pair of pairs) pair.muted = true;
    },
    blackhole() {
      mode = "blackhole";
      for (const pair of pairs) {
        pair.muted = true;
        pair.blackholed = true;
      }
    },
    heal() {
      mode = "open";
      for (const pair of [...pairs]) {
        if (!pair.muted) continue;
        pair.client.resetAndDestroy();
        destroy(pair);
      }
    },
    close() {
      for (const pair of [...pairs]) destroy(pair);
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** host and port of an `http://host:port` URL. */
export function targetOf(url: string): RelayTarget {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: Number(parsed.port) };
}
