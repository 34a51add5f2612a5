import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../lib/logging.ts";
import type { EdgeConfig } from "./config.ts";
import type { NodeHandlerFn } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import { createErrorInterceptor, validationInterceptor } from "./interceptors.ts";
import { edgeRoutes } from "./routes.ts";

export interface RunningEdge {
  readonly url: string;
  readonly hostId: string;
  readonly port: number;
  stop(): Promise<void>;
}

/** Starts the Connect edge (Connect, gRPC and gRPC-Web over HTTP/1.1 and h2c) on one port. */
export async function startEdge(config: EdgeConfig, logger: Logger): Promise<RunningEdge> {
  // Filled in once the socket is bound: with port 0 the URL is not known before.
  const identity = { hostId: "", publicUrl: "" };
  const handler = connectNodeAdapter({
    routes: edgeRoutes(identity),
    // Interceptors run outermost first: errors from validation pass through the error boundary.
    interceptors: [createErrorInterceptor(logger), validationInterceptor],
    fallback: healthFallback,
  });
  const server = await listenHttp(handler, config.host, config.port);
  const url = `http://${config.host}:${server.port}`;
  identity.hostId = config.hostId ?? `edge-${config.host}-${server.port}`;
  identity.publicUrl = config.publicUrl ?? url;
  logger.info({ url, host_id: identity.hostId }, "edge listening");
  return { url, hostId: identity.hostId, port: server.port, stop: () => server.close() };
}

// Plain HTTP liveness for load balancers that cannot speak gRPC health.
const healthFallback: NodeHandlerFn = (req, res) => {
  if (req.method === "GET" && (req.url === "/healthz" || req.url === "/readyz")) {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found: Parley's edge serves Connect, gRPC and gRPC-Web under /parley.edge.v1.*\n");
};
