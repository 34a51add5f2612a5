import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../lib/logging.ts";
import type { EdgeAuthOptions } from "./auth/edge-auth.ts";
import { createEdgeAuth } from "./auth/edge-auth.ts";
import { createAuthInterceptor } from "./auth/interceptor.ts";
import type { EdgeConfig } from "./config.ts";
import type { NodeHandlerFn } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import { createErrorInterceptor, validationInterceptor } from "./interceptors.ts";
import { createInternalClients } from "./internal-clients.ts";
import { edgeRoutes } from "./routes.ts";

export interface RunningEdge {
  readonly url: string;
  readonly hostId: string;
  readonly port: number;
  stop(): Promise<void>;
}

/** What the edge takes besides its environment; all optional. */
export type EdgeOptions = EdgeAuthOptions;

/**
 * Starts the Connect edge (Connect, gRPC and gRPC-Web over HTTP/1.1 and h2c) on one port. Fails
 * before listening when authentication is not configured (a ConfigError naming the variables).
 */
export async function startEdge(
  config: EdgeConfig,
  logger: Logger,
  options: EdgeOptions = {},
): Promise<RunningEdge> {
  const auth = await createEdgeAuth(config, options);
  if (auth.devIssuer !== undefined) {
    logger.warn(
      { key_file: auth.devIssuer.keyFile, issuer: auth.issuer, audience: auth.audience },
      "edge trusts the dev issuer: development only (mint tokens with `npm run token -- <user> <device>`)",
    );
  } else {
    logger.info(
      { issuer: auth.issuer, audience: auth.audience },
      "edge verifies tokens with the configured public keys",
    );
  }
  const clients = createInternalClients(config);
  // Filled in once the socket is bound: with port 0 the URL is not known before.
  const identity = { hostId: "", publicUrl: "" };
  let server: Awaited<ReturnType<typeof listenHttp>>;
  try {
    const handler = connectNodeAdapter({
      routes: edgeRoutes({ identity, clients, logger }),
      // Outermost first: every error passes the error boundary; authentication comes before
      // validation, so a caller without a valid token learns nothing about the request schema.
      interceptors: [
        createErrorInterceptor(logger),
        createAuthInterceptor(auth.verifier),
        validationInterceptor,
      ],
      fallback: healthFallback,
    });
    server = await listenHttp(handler, config.host, config.port);
  } catch (err) {
    clients.close();
    throw err;
  }
  const url = `http://${config.host}:${server.port}`;
  identity.hostId = config.hostId ?? `edge-${config.host}-${server.port}`;
  identity.publicUrl = config.publicUrl ?? url;
  logger.info({ url, host_id: identity.hostId }, "edge listening");
  return {
    url,
    hostId: identity.hostId,
    port: server.port,
    async stop() {
      // Running calls finish (or are cut after the grace period) before their channels close.
      await server.close();
      clients.close();
    },
  };
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
