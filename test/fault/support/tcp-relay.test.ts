// The relay fault tests put between devices and the edges: it forwards, balances, and fails the
// ways the scenarios need (cut, refuse, mute, black-hole), then heals.
import type { AddressInfo, Server, Socket } from "node:net";
import { connect, createServer } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { TcpRelay } from "./tcp-relay.ts";
import { startTcpRelay } from "./tcp-relay.ts";

const servers: Server[] = [];
const relays: TcpRelay[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  for (const relay of relays.splice(0)) await relay.close();
  for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
});

/** A server answering each line with `<name>:<line>`, and what it received. */
async function echo(name: string) {
  const received: string[] = [];
  const server = createServer((socket) => {
    socket.on("data", (chunk) => {
      received.push(chunk.toString());
      socket.write(`${name}:${chunk.toString()}`);
    });
    socket.on("error", () => {});
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { port: (server.address() as AddressInfo).port, received };
}

async function relayTo(...ports: number[]) {
  const relay = await startTcpRelay(() => ports.map((port) => ({ host: "127.0.0.1", port })));
  relays.push(relay);
  return relay;
}

/** A client of the relay: what it received so far, and whether it was closed. */
async function client(relay: TcpRelay) {
  const socket = connect(relay.port, "127.0.0.1");
  sockets.push(socket);
  const state = { data: "", closed: false };
  socket.on("data", (chunk) => {
    state.data += chunk.toString();
  });
  socket.on("close", () => {
    state.closed = true;
  });
  socket.on("error", () => {});
  // A refused connection may be reset before the client sees it open.
  await new Promise<void>((resolve) => {
    socket.once("connect", () => resolve());
    socket.once("close", () => resolve());
  });
  return { socket, state };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 150));

describe("tcp relay", () => {
  it("forwards both ways, round-robin over its targets, skipping one that refuses", async () => {
    const a = await echo("a");
    const b = await echo("b");
    const dead = await echo("dead");
    await new Promise((resolve) => servers.pop()?.close(resolve));
    const relay = await relayTo(a.port, dead.port, b.port);
    const answers: string[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await client(relay);
      c.socket.write("hi");
      await expect.poll(() => c.state.data).not.toBe("");
      answers.push(c.state.data);
    }
    expect(answers).toEqual(["a:hi", "b:hi", "a:hi"]);
    expect(relay.accepted).toBe(3);
  });

  it("cutAll resets every connection; refuse resets new ones until heal", async () => {
    const a = await echo("a");
    const relay = await relayTo(a.port);
    const first = await client(relay);
    relay.refuse();
    relay.cutAll();
    await expect.poll(() => first.state.closed).toBe(true);
    const refused = await client(relay);
    await expect.poll(() => refused.state.closed).toBe(true);
    relay.heal();
    const later = await client(relay);
    later.socket.write("back");
    await expect.poll(() => later.state.data).toBe("a:back");
  });

  it("mute drops what the client sends but still delivers what it is sent; blackhole drops both; heal resets them", async () => {
    const a = await echo("a");
    const relay = await relayTo(a.port);
    const c = await client(relay);
    c.socket.write("one");
    await expect.poll(() => c.state.data).toBe("a:one");
    relay.mute();
    c.socket.write("lost");
    await settle();
    expect(a.received).toEqual(["one"]);
    relay.blackhole();
    c.socket.write("lost too");
    await settle();
    expect(a.received).toEqual(["one"]);
    expect(c.state.data).toBe("a:one");
    expect(c.state.closed).toBe(false);
    relay.heal();
    await expect.poll(() => c.state.closed).toBe(true);
  });
});
