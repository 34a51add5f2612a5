import type net from "node:net";
import type { Client, Transport } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { ParleyClient } from "../../clients/ts/index.ts";
import { createParleyClient } from "../../clients/ts/index.ts";
import { openDevIssuer } from "../../edge/auth/dev-issuer.ts";
import { DEFAULT_JWT_AUDIENCE, DEV_ISSUER, devIssuerKeyPath } from "../../edge/config.ts";
import { ContactService } from "../../gen/parley/edge/v1/contact_service_pb.ts";
import { ConversationService } from "../../gen/parley/edge/v1/conversation_service_pb.ts";
import { DeviceService } from "../../gen/parley/edge/v1/device_service_pb.ts";
import { directConversationId } from "../../lib/ids.ts";
import { deviceKeys } from "../../services/key/test-support.ts";
import { inBatches } from "../../test/support/mesh-users.ts";
import { socketFactory, sourceAddress } from "./stream-client.ts";

export { inBatches };

/** Users and devices of a run on one edge (or several, round-robin), with tokens and transports. */
export interface BenchDevice {
  /** Index in the run: what stamps carry as their target. */
  readonly index: number;
  readonly userId: string;
  readonly deviceId: string;
  readonly token: string;
}

export interface BenchUser {
  readonly userId: string;
  readonly devices: readonly BenchDevice[];
}

/**
 * Connect transports (gRPC over HTTP/2) to the edges, spread over loopback source addresses; the
 * SDK clients and setup calls share them round-robin, every call carrying its own token (the edge
 * authenticates per call). Their sockets are tracked so S5 can cut them all.
 */
export interface TransportPool {
  next(): Transport;
  dropAll(): number;
  readonly sockets: Set<net.Socket>;
}

export function createTransportPool(
  edgeUrls: readonly string[],
  connections: number,
  sourceAddresses: number,
): TransportPool {
  const sockets = new Set<net.Socket>();
  const pool = Array.from({ length: connections }, (_, i) =>
    createGrpcTransport({
      baseUrl: edgeUrls[i % edgeUrls.length] as string,
      nodeOptions: {
        createConnection: socketFactory(sourceAddress(i, sourceAddresses), sockets),
        settings: { initialWindowSize: 1 << 20 },
      },
    }),
  );
  let i = 0;
  return {
    sockets,
    next: () => pool[i++ % pool.length] as Transport,
    dropAll() {
      const count = sockets.size;
      for (const socket of [...sockets]) socket.destroy();
      return count;
    },
  };
}

/**
 * Runs a setup call again while the mesh answers UNAVAILABLE or DEADLINE_EXCEEDED (a busy mesh
 * during a large setup); ALREADY_EXISTS from a repeat counts as done.
 */
export async function settled<T>(call: () => Promise<T>, attempts = 8): Promise<T | undefined> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : undefined;
      if (code === Code.AlreadyExists && attempt > 1) return undefined;
      if ((code !== Code.Unavailable && code !== Code.DeadlineExceeded) || attempt >= attempts) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt * Math.random()));
    }
  }
}

/** Mints dev-issuer tokens the edge of the embedded profile (or a cluster trusting that key) accepts. */
export async function createTokenMinter(dataDir: string, ttlMs = 6 * 3_600_000) {
  const issuer = await openDevIssuer(devIssuerKeyPath(dataDir));
  return (userId: string, deviceId: string) =>
    issuer.mint({ userId, deviceId, ttlMs, issuer: DEV_ISSUER, audience: DEFAULT_JWT_AUDIENCE });
}

/**
 * `users` users with `devicesPerUser` devices each (ids unique to this run), tokens minted, every
 * device registered with keys, and a profile per user when `profiles` (connections need known
 * users). Every device registers the same key bundle: signing a fresh one per device would make
 * the setup of 100K devices take longer than the benchmark, and the server checks each
 * signature either way.
 */
export async function createPopulation(options: {
  readonly dataDir: string;
  readonly transports: TransportPool;
  readonly prefix: string;
  readonly users: number;
  readonly devicesPerUser: number;
  readonly profiles: boolean;
  readonly concurrency?: number;
  readonly onProgress?: (done: number, total: number) => void;
}): Promise<BenchUser[]> {
  const mint = await createTokenMinter(options.dataDir);
  const keys = deviceKeys({ oneTimePrekeys: 2 });
  const users: BenchUser[] = [];
  let index = 0;
  for (let u = 0; u < options.users; u++) {
    const userId = `${options.prefix}u${u}`;
    const devices: BenchDevice[] = [];
    for (let d = 0; d < options.devicesPerUser; d++) {
      devices.push({ index: index++, userId, deviceId: `d${d}`, token: "" });
    }
    users.push({ userId, devices });
  }
  let done = 0;
  const all = users.flatMap((user) => user.devices.map((device, d) => ({ user, device, d })));
  const minted = await inBatches(all, options.concurrency ?? 64, async ({ user, device, d }) => {
    const token = await mint(device.userId, device.deviceId);
    const headers = { authorization: `Bearer ${token}` };
    const transport = options.transports.next();
    if (d === 0 && options.profiles) {
      await settled(() =>
        createClient(ContactService, transport).setMyProfile({ displayName: user.userId }, { headers }),
      );
    }
    await settled(() =>
      createClient(DeviceService, transport).registerDevice(
        {
          displayName: device.deviceId,
          identityKey: keys.identityKey,
          signedPrekey: keys.signedPrekey,
          lastResortPrekey: keys.lastResortPrekey,
          oneTimePrekeys: keys.oneTimePrekeys,
        },
        { headers },
      ),
    );
    done++;
    if (done % 500 === 0) options.onProgress?.(done, all.length);
    return { ...device, token };
  });
  const byUser = new Map<string, BenchDevice[]>();
  for (const device of minted) {
    const list = byUser.get(device.userId) ?? [];
    list.push(device);
    byUser.set(device.userId, list);
  }
  return users.map((user) => ({ userId: user.userId, devices: byUser.get(user.userId) ?? [] }));
}

type Clients = {
  contacts: Client<typeof ContactService>;
  conversations: Client<typeof ConversationService>;
};

function clientsOf(transports: TransportPool): Clients {
  const transport = transports.next();
  return {
    contacts: createClient(ContactService, transport),
    conversations: createClient(ConversationService, transport),
  };
}

const auth = (device: BenchDevice) => ({ headers: { authorization: `Bearer ${device.token}` } });

/** `a` asks, `b` accepts; returns their direct conversation's id. */
export async function connectPair(transports: TransportPool, a: BenchUser, b: BenchUser): Promise<string> {
  const { contacts } = clientsOf(transports);
  const aDevice = a.devices[0] as BenchDevice;
  const bDevice = b.devices[0] as BenchDevice;
  await settled(() => contacts.requestConnection({ otherUserId: b.userId }, auth(aDevice)));
  await settled(() => contacts.acceptConnection({ otherUserId: a.userId }, auth(bDevice)));
  return directConversationId(a.userId, b.userId);
}

/** A group of `owner` and `members` (each an accepted connection of the owner first). */
export async function createBenchGroup(
  transports: TransportPool,
  owner: BenchUser,
  members: readonly BenchUser[],
): Promise<string> {
  const ownerDevice = owner.devices[0] as BenchDevice;
  await inBatches(members, 32, async (member) => {
    const { contacts } = clientsOf(transports);
    await settled(() =>
      contacts.requestConnection({ otherUserId: owner.userId }, auth(member.devices[0] as BenchDevice)),
    );
    await settled(() => contacts.acceptConnection({ otherUserId: member.userId }, auth(ownerDevice)));
  });
  const { conversations } = clientsOf(transports);
  const created = await conversations.createGroup(
    { name: "bench", memberUserIds: members.map((m) => m.userId), requestId: crypto.randomUUID() },
    auth(ownerDevice),
  );
  const id = created.conversation?.conversationId;
  if (id === undefined || id === "") throw new Error("CreateGroup returned no conversation id");
  return id;
}

/** An SDK client for `device` on the shared transports, with the SDK's defaults (not connected yet). */
export function sdkClient(transports: TransportPool, device: BenchDevice): ParleyClient {
  return createParleyClient({
    transport: transports.next(),
    token: device.token,
  });
}
