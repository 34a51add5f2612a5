import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createKeyServiceDeviceCheck } from "../../edge/auth/device-check.ts";
import type { EdgeConfig } from "../../edge/config.ts";
import { devIssuerAuthConfig, loadEdgeConfig } from "../../edge/config.ts";
import { startEdge } from "../../edge/server.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import type { Logger } from "../../lib/logging.ts";
import { createInProcessRegistry } from "../../lib/registry/in-process-registry.ts";
import type { RunningService } from "../../lib/service-process.ts";
import { startGrpcService } from "../../lib/service-process.ts";
import { createConnectionService } from "../../services/connection/service.ts";
import { createDeliveryService } from "../../services/delivery/service.ts";
import { createKeyService } from "../../services/key/service.ts";
import { createSenderService } from "../../services/sender/service.ts";
import type { HistoryThreadSettings } from "./history-thread.ts";
import { startServiceThread } from "./service-thread.ts";

export interface EmbeddedMeshOptions {
  /** Where the embedded engines keep their data. */
  readonly dataDir: string;
  readonly edgeHost: string;
  /** 0 picks a free port (tests); `npm start` uses 8080. */
  readonly edgePort: number;
  readonly logger: Logger;
  /** Edge settings over the defaults (tests: a short heartbeat interval, a small stream queue). */
  readonly edge?: Partial<
    Pick<EdgeConfig, "heartbeatIntervalMs" | "streamQueueLimit" | "drainTimeoutMs" | "leaseTtlMs">
  >;
  /**
   * Called when a service's worker thread dies (history runs on its own): the mesh is then broken,
   * and `npm start` ends the process so its supervisor starts it again. It is logged either way.
   */
  readonly onThreadFailure?: (error: Error) => void;
}

export interface EmbeddedMesh {
  readonly edgeUrl: string;
  /** host:port of the edge's internal EdgePushService (what delivery pushes to). */
  readonly edgePushAddress: string;
  /** host:port of each internal service's gRPC server, by service name. */
  readonly internal: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

/**
 * The embedded profile: every service and the edge in one process, talking gRPC over loopback
 * exactly as in the cluster profile, on the embedded engines under `dataDir`: one SQLite file for
 * the stores (`parley.db`), history's own (`history.db`, written from its worker thread) and one
 * for the broker (`broker.db`). This is the only place besides each service's own main that picks
 * adapters (and tools/mesh/history-thread.ts, history's side of it).
 */
export async function startEmbeddedMesh(options: EmbeddedMeshOptions): Promise<EmbeddedMesh> {
  const dataDir = resolve(options.dataDir);
  mkdirSync(dataDir, { recursive: true });
  const storePath = join(dataDir, "parley.db");
  const started: RunningService[] = [];
  const stopAll = async () => {
    for (const service of started.reverse()) await service.stop();
  };
  const internal: Record<string, string> = {};
  const serve = async (name: string, registrations: readonly GrpcServiceRegistration[]) => {
    const service = await startGrpcService({
      name,
      host: "127.0.0.1",
      port: 0,
      services: registrations,
      logger: options.logger.child({ service: name }),
    });
    started.push(service);
    internal[name] = service.address;
    return service.address;
  };
  // Background parts (consumers, relays, views) stop after their server, so in-flight calls finish.
  const track = (name: string, stop: () => Promise<void>) => started.push({ name, address: "", stop });

  try {
    // The registry the edge writes (its host, its device routes) and delivery reads: etcd's
    // stand-in, closed last.
    const registry = createInProcessRegistry({ logger: options.logger.child({ component: "registry" }) });
    track("registry", () => registry.close());
    const broker = await createEmbeddedBroker({ path: join(dataDir, "broker.db") });
    track("broker", () => broker.close());

    const key = await createKeyService({ store: { path: storePath }, broker, logger: options.logger });
    track("key-parts", () => key.stop());
    const keyAddress = await serve("key", key.registrations);

    const connection = createConnectionService({
      store: { path: storePath },
      broker,
      logger: options.logger,
      devices: { keyAddress },
    });
    track("connection-parts", () => connection.stop());
    const connectionAddress = await serve("connection", connection.registrations);

    const sender = await createSenderService({
      broker,
      keyAddress,
      connectionAddress,
      logger: options.logger,
      idempotencyPath: storePath,
    });
    track("sender-parts", () => sender.stop());
    await serve("sender", sender.registrations);

    // History on its own thread: storing a message and its receipts is the mesh's heaviest
    // synchronous work (SQLite), and there it no longer holds up the edge's pushes.
    const historySettings: HistoryThreadSettings = { dataDir, connectionAddress };
    const history = await startServiceThread({
      name: "history",
      entry: new URL("./history-thread.ts", import.meta.url),
      settings: historySettings,
      broker,
      logger: options.logger.child({ service: "history" }),
      onUnexpectedExit: options.onThreadFailure ?? (() => {}),
    });
    started.push({ name: "history", address: history.address, stop: history.stop });
    internal.history = history.address;
    const delivery = await createDeliveryService({ broker, registry, logger: options.logger });
    track("delivery-parts", () => delivery.stop());
    await serve("delivery", delivery.registrations);

    // The edge's revocation check (key.v1 GetDeviceStatus): streams open only for registered
    // devices, and a removed device's tokens are refused. Its channel closes after the edge.
    const deviceCheck = createKeyServiceDeviceCheck(keyAddress);
    track("edge-device-check", async () => deviceCheck.close());
    const edge = await startEdge(
      {
        // Every edge variable at its default (heartbeat, queue limit, drain, lease TTL...), then
        // what this profile decides: where to listen, the push port picked by the OS, the peers.
        ...loadEdgeConfig({}),
        ...options.edge,
        host: options.edgeHost,
        port: options.edgePort,
        pushHost: "127.0.0.1",
        pushPort: 0,
        connectionAddress: internal.connection ?? "",
        keyAddress,
        senderAddress: internal.sender ?? "",
        historyAddress: internal.history ?? "",
        deliveryAddress: internal.delivery ?? "",
        ...devIssuerAuthConfig(dataDir),
      },
      options.logger.child({ service: "edge" }),
      { registry, isDeviceActive: deviceCheck.isDeviceActive },
    );
    started.push({ name: "edge", address: edge.url, stop: edge.stop });
    return { edgeUrl: edge.url, edgePushAddress: edge.pushAddress, internal, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
