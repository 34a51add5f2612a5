import type { ParleyClient } from "../../clients/ts/index.ts";
import type { DeliveryLog } from "./delivery-log.ts";
import type { BenchOptions } from "./options.ts";
import type { BenchDevice, BenchUser, TransportPool } from "./population.ts";
import { connectPair, createPopulation, createTransportPool, inBatches, sdkClient } from "./population.ts";
import type { Progress } from "./progress.ts";
import type { SdkSender } from "./runners.ts";
import { readStamp } from "./stamp.ts";
import type { BenchStream, ConnectionPool } from "./stream-client.ts";
import { createConnectionPool, openBenchStream } from "./stream-client.ts";
import type { Target } from "./targets.ts";

/** Tries to open one device's stream before it counts as failed. */
const OPEN_ATTEMPTS = 6;

/** A unique prefix for user ids, so runs against the same cluster never collide. */
export function runPrefix(scenario: string): string {
  return `b${Date.now().toString(36)}${scenario}`;
}

export interface OpenedStreams {
  readonly streams: readonly BenchStream[];
  readonly pool: ConnectionPool;
  /** Ends by code, counted as they happen (a stream the server closes, a reset). */
  readonly ends: Map<string, number>;
  readonly connectMs: number;
  /** Streams whose first frame never came, after every attempt. */
  readonly failed: number;
  /** Refused opens that were tried again, by end code. */
  readonly refusals: ReadonlyMap<string, number>;
  /** Parley: the edge host id its ready frames named. */
  readonly hostId: string | undefined;
  close(): void;
}

/**
 * Opens one minimal Session stream per device (stream-client.ts) on `target`, `perConnection`
 * streams per HTTP/2 connection (the default spreads them over `options.connections`), and waits
 * until each got its first frame. Parley's devices send a hello and their token.
 */
export async function openStreams(
  target: Target,
  devices: readonly BenchDevice[],
  options: BenchOptions,
  log: DeliveryLog | undefined,
  extra: {
    perConnection?: number;
    heartbeatMs?: number;
    pool?: ConnectionPool;
    concurrency?: number;
    ack?: boolean;
    /** A shared payload's stamp names no device: log each delivery under the receiving device. */
    stampTargetIsReceiver?: boolean;
  } = {},
): Promise<OpenedStreams> {
  const perConnection = extra.perConnection;
  const connections =
    perConnection === undefined ? options.connections : Math.ceil(devices.length / perConnection);
  const pool =
    extra.pool ??
    createConnectionPool(target.urls[0] as string, {
      connections: Math.max(1, connections),
      sourceAddresses: options.sourceAddresses,
    });
  const ends = new Map<string, number>();
  const started = performance.now();
  let hostId: string | undefined;
  let failed = 0;
  const parley = target.name === "parley";
  // A refused open (the mesh too busy to check the device, say) is tried again after a jittered
  // backoff, as a real client would; refusals are counted by code.
  const refusals = new Map<string, number>();
  const streams = await inBatches(devices, extra.concurrency ?? 200, async (device) => {
    for (let attempt = 1; ; attempt++) {
      // By the device's index, so streams opened in several rounds fill connections in order.
      const session =
        perConnection === undefined ? pool.next() : pool.at(Math.floor(device.index / perConnection));
      const stream = openBenchStream(session, {
        device: device.index,
        ...(parley ? { token: device.token, hello: true } : {}),
        heartbeatMs: extra.heartbeatMs ?? 0,
        ...(extra.ack === true ? { ack: true } : {}),
        ...(log === undefined
          ? {}
          : {
              onStamp: extra.stampTargetIsReceiver
                ? (stamp, at) => log.record({ ...stamp, target: device.index }, at)
                : (stamp, at) => log.record(stamp, at),
            }),
      });
      const first = await stream.ready;
      if (first === undefined && attempt < OPEN_ATTEMPTS) {
        const end = await stream.ended;
        refusals.set(end.code, (refusals.get(end.code) ?? 0) + 1);
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 250 * 2 ** attempt));
        continue;
      }
      void stream.ended.then((end) => ends.set(end.code, (ends.get(end.code) ?? 0) + 1));
      if (first === undefined) failed++;
      else if (first.body.case === "ready" && hostId === undefined) hostId = first.body.value.hostId;
      return stream;
    }
  });
  return {
    streams,
    pool,
    ends,
    connectMs: performance.now() - started,
    failed,
    refusals,
    hostId,
    close() {
      for (const stream of streams) stream.close();
      pool.close();
    },
  };
}

/** Devices named by index only: the baselines route by `x-bench-device`. */
export function anonymousDevices(count: number, from = 0): BenchDevice[] {
  return Array.from({ length: count }, (_, i) => ({
    index: from + i,
    userId: `dev${from + i}`,
    deviceId: "d0",
    token: "",
  }));
}

export interface SdkPairs {
  readonly users: readonly BenchUser[];
  readonly clients: ReadonlyMap<number, ParleyClient>;
  readonly senders: readonly SdkSender[];
  readonly transports: TransportPool;
  /** Connects every client (at most `concurrency` at a time). */
  connectAll(concurrency?: number): Promise<number>;
  closeAll(): Promise<void>;
}

/**
 * S1's population on Parley: `devices` users with one device each, paired into 1:1 conversations
 * (an accepted connection per pair), an SDK client per device that records every message it shows.
 * `both`: both users of a pair write; `one`: only the first.
 */
export async function createSdkPairs(
  target: Target,
  options: BenchOptions,
  log: DeliveryLog,
  progress: Progress,
  devices: number,
): Promise<SdkPairs> {
  const transports = createTransportPool(target.urls, options.connections, options.sourceAddresses);
  const count = Math.max(2, devices - (devices % 2));
  const users = await createPopulation({
    dataDir: target.dataDir as string,
    transports,
    prefix: runPrefix(options.scenario),
    users: count,
    devicesPerUser: 1,
    profiles: true,
    onProgress: (done, total) => progress.note(`  registered ${done}/${total} devices`),
  });
  const pairs = await inBatches(
    Array.from({ length: count / 2 }, (_, i) => i),
    32,
    async (i) => {
      const a = users[2 * i] as BenchUser;
      const b = users[2 * i + 1] as BenchUser;
      return { a, b, conversationId: await connectPair(transports, a, b) };
    },
  );
  const clients = new Map<number, ParleyClient>();
  for (const user of users) {
    for (const device of user.devices) {
      const client = sdkClient(transports, device);
      client.onMessage(({ message }) => {
        const stamp = readStamp(message.ciphertext);
        // The sender's own messages come back (the echo) without ciphertext.
        if (stamp !== undefined) log.record(stamp);
      });
      clients.set(device.index, client);
    }
  }
  const senders: SdkSender[] = [];
  for (const { a, b, conversationId } of pairs) {
    const aDevice = a.devices[0] as BenchDevice;
    const bDevice = b.devices[0] as BenchDevice;
    senders.push({
      client: clients.get(aDevice.index) as ParleyClient,
      conversationId,
      recipients: [bDevice],
    });
    if (options.direction === "both") {
      senders.push({
        client: clients.get(bDevice.index) as ParleyClient,
        conversationId,
        recipients: [aDevice],
      });
    }
  }
  return {
    users,
    clients,
    senders,
    transports,
    async connectAll(concurrency = 50) {
      const started = performance.now();
      await inBatches([...clients.values()], concurrency, (client) => client.connect());
      return performance.now() - started;
    },
    async closeAll() {
      await inBatches([...clients.values()], 100, (client) => client.close());
    },
  };
}

/** Sums error maps. */
export function addErrors(into: Record<string, number>, from: Readonly<Record<string, number>>): void {
  for (const [key, count] of Object.entries(from)) into[key] = (into[key] ?? 0) + count;
}
