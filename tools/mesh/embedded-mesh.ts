import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { startEdge } from "../../edge/server.ts";
import type { Logger } from "../../lib/logging.ts";
import type { RunningService } from "../../lib/service-process.ts";
import { startGrpcService } from "../../lib/service-process.ts";
import { connectionServices } from "../../services/connection/service.ts";
import { deliveryServices } from "../../services/delivery/service.ts";
import { historyServices } from "../../services/history/service.ts";
import { keyServices } from "../../services/key/service.ts";
import { senderServices } from "../../services/sender/service.ts";

export interface EmbeddedMeshOptions {
  /** Where the embedded engines keep their data. */
  readonly dataDir: string;
  readonly edgeHost: string;
  /** 0 picks a free port (tests); `npm start` uses 8080. */
  readonly edgePort: number;
  readonly logger: Logger;
}

export interface EmbeddedMesh {
  readonly edgeUrl: string;
  /** host:port of each internal service's gRPC server, by service name. */
  readonly internal: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

/**
 * The embedded profile: every service and the edge in one process, talking gRPC over loopback
 * exactly as in the cluster profile, with data under `dataDir` instead of external engines.
 */
export async function startEmbeddedMesh(options: EmbeddedMeshOptions): Promise<EmbeddedMesh> {
  mkdirSync(resolve(options.dataDir), { recursive: true });
  const started: RunningService[] = [];
  const stopAll = async () => {
    for (const service of started.reverse()) await service.stop();
  };
  try {
    const internal: Record<string, string> = {};
    const grpcServices = {
      connection: connectionServices(),
      key: keyServices(),
      sender: senderServices(),
      history: historyServices(),
      delivery: deliveryServices(),
    };
    for (const [name, services] of Object.entries(grpcServices)) {
      const service = await startGrpcService({
        name,
        host: "127.0.0.1",
        port: 0,
        services,
        logger: options.logger.child({ service: name }),
      });
      started.push(service);
      internal[name] = service.address;
    }
    const edge = await startEdge(
      {
        host: options.edgeHost,
        port: options.edgePort,
        publicUrl: undefined,
        hostId: undefined,
        logLevel: "info",
        connectionAddress: internal.connection ?? "",
        keyAddress: internal.key ?? "",
        senderAddress: internal.sender ?? "",
        historyAddress: internal.history ?? "",
        deliveryAddress: internal.delivery ?? "",
      },
      options.logger.child({ service: "edge" }),
    );
    started.push({ name: "edge", address: edge.url, stop: edge.stop });
    return { edgeUrl: edge.url, internal, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
