import type { StreamRequest, UnaryRequest } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import type { SendRequest } from "../gen/parley/edge/v1/session_service_pb.ts";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import type { Logger } from "../lib/logging.ts";
import { CLIENT_MESSAGE_MAX_BYTES, CLIENT_REQUEST_MAX_WIRE_BYTES } from "../lib/message-limits.ts";
import type { Registry } from "../lib/registry/registry.ts";
import { cacheDeviceCheck } from "./auth/device-check.ts";
import type { EdgeAuthOptions } from "./auth/edge-auth.ts";
import { createEdgeAuth } from "./auth/edge-auth.ts";
import { createAuthInterceptor } from "./auth/interceptor.ts";
import type { EdgeConfig } from "./config.ts";
import { loadEdgeConfig } from "./config.ts";
import { withDirectSession } from "./direct-session.ts";
import { COMPRESS_MIN_BYTES } from "./frame-writer.ts";
import { createHostDirectory, rendezvousHost } from "./host-directory.ts";
import type { NodeHandlerFn } from "./http-server.ts";
import { listenHttp } from "./http-server.ts";
import { createErrorInterceptor, createTelemetryInterceptor, validationInterceptor } from "./interceptors.ts";
import { createInternalClients } from "./internal-clients.ts";
import { createLeaseKeeper } from "./lease-keeper.ts";
import { edgeStreamMetrics, observeStreams } from "./metrics.ts";
import { createPushServer } from "./push-service.ts";
import { edgeRoutes } from "./routes.ts";
import { createSessionService } from "./session-service.ts";
import { shutdownClose } from "./streams/device-stream.ts";
import { createPresenceReporter } from "./streams/presence-reporter.ts";
import { createPushedMessages } from "./streams/pushed-messages.ts";
import { createStandaloneLease } from "./streams/standalone-lease.ts";
import { createStreamHub } from "./streams/stream-hub.ts";
import { withTransportAbort } from "./transport-scope.ts";

export interface RunningEdge {
  readonly url: string;
  readonly hostId: string;
  readonly port: number;
  /** host:port of this edge's EdgePushService, as written in the registry. */
  readonly pushAddress: string;
  /** Device streams open now. */
  readonly streamCount: number;
  /** Drains (Drain frames, then SHUTDOWN closes), stops both servers and revokes the lease. */
  stop(): Promise<void>;
}

/** What the edge takes besides its environment; all optional. */
export interface EdgeOptions extends EdgeAuthOptions {
  /**
   * Where the edge registers itself and its device streams (the embedded mesh passes its
   * in-process registry; the cluster, etcd). Without one the edge runs alone: streams work, device
   * routes stay in the process, and no EdgePushService is served (nobody could find it).
   */
  readonly registry?: Registry;
  /** How long a new Session waits for its first frame (a hello) before going live. Default 1 s. */
  readonly helloWaitMs?: number;
  /** How often the edge updates its load in the registry. Default 5 s. */
  readonly loadReportIntervalMs?: number;
  /** How long an ACTIVE answer of `isDeviceActive` is reused (edge/auth/device-check.ts). Default 10 s. */
  readonly deviceCheckCacheMs?: number;
}

/** Close.retry_after of streams closed by a shutdown with no other host to move to. */
const SHUTDOWN_RETRY_AFTER_MS = 2_000;

/**
 * Starts the Connect edge (Connect, gRPC and gRPC-Web over HTTP/1.1 and h2c) on one port, and its
 * internal EdgePushService when it has a registry. Fails before listening when authentication is
 * not configured (a ConfigError naming the variables).
 */
export async function startEdge(
  givenConfig: EdgeConfig,
  logger: Logger,
  options: EdgeOptions = {},
): Promise<RunningEdge> {
  // A caller built against an older EdgeConfig (a hand-written literal) gets the defaults of the
  // variables it does not know, rather than undefined timers and limits.
  const config: EdgeConfig = { ...loadEdgeConfig({}), ...givenConfig };
  // The revocation hook behind a short cache of ACTIVE answers, dropped as soon as this edge learns
  // of a removal (its own RemoveDevice passthrough, or a pushed KeyChanged DEVICE_REMOVED).
  const deviceCheck =
    options.isDeviceActive === undefined
      ? undefined
      : cacheDeviceCheck(options.isDeviceActive, {
          ...(options.deviceCheckCacheMs === undefined ? {} : { activeTtlMs: options.deviceCheckCacheMs }),
        });
  const auth = await createEdgeAuth(
    config,
    deviceCheck === undefined ? {} : { isDeviceActive: deviceCheck.check },
  );
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
  const { registry } = options;
  if (registry === undefined) {
    logger.warn(
      "edge runs without a registry: device routes stay in this process and no EdgePushService is served",
    );
  }
  const clients = createInternalClients(config);
  // Filled in once the sockets are bound: with port 0 the URL is not known before.
  const identity = { hostId: "", publicUrl: "" };
  const streamLogger = logger.child({ component: "streams" });
  const presence = createPresenceReporter({
    hostId: () => identity.hostId,
    delivery: clients.delivery,
    ttlMs: 3 * config.heartbeatIntervalMs,
    logger: streamLogger,
  });
  const hub = createStreamHub({
    hostId: () => identity.hostId,
    lease: () => keeper.current(),
    presence,
    limits: {
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      queueLimit: config.streamQueueLimit,
      maxBadFramesPerMinute: 10,
      closeGraceMs: 5_000,
    },
    logger: streamLogger,
    onDeviceRemoved: (device) => deviceCheck?.forget(device),
    metrics: edgeStreamMetrics,
  });
  /** This edge served a RemoveDevice: the device's tokens and its stream here are revoked now. */
  const onDeviceRemoved = (device: DeviceAddress, removedAt: Date) => {
    deviceCheck?.forget(device);
    hub.revoke(device, removedAt);
  };
  const directory = createHostDirectory({
    registry,
    self: () => ({ ...identity, load: hub.size, state: hub.state }),
    logger,
  });
  // What acks link to and are measured from: the messages this edge pushed.
  const pushed = createPushedMessages();
  const session = createSessionService({
    hub,
    pushed,
    metrics: edgeStreamMetrics,
    clients,
    directory,
    hostId: () => identity.hostId,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    helloWaitMs: options.helloWaitMs ?? 1_000,
    logger: streamLogger,
  });

  const keeper = createLeaseKeeper({
    register: async () =>
      registry === undefined
        ? createStandaloneLease(identity.hostId)
        : registry.registerHost(
            {
              hostId: identity.hostId,
              pushAddress,
              publicUrl: identity.publicUrl,
              state: hub.state,
              load: hub.size,
            },
            { ttlMs: config.leaseTtlMs },
          ),
    // Its routes are gone: devices reconnect (here again, once registered, or elsewhere).
    onLost: () => hub.closeAll(shutdownClose(SHUTDOWN_RETRY_AFTER_MS)),
    logger,
  });
  const pushServer = registry === undefined ? undefined : createPushServer(hub, logger, pushed);
  let server: Awaited<ReturnType<typeof listenHttp>> | undefined;
  let pushAddress = "";
  try {
    if (pushServer !== undefined) {
      const pushPort = await pushServer.listen(config.pushHost, config.pushPort);
      pushAddress = config.pushAdvertiseAddress ?? hostPort(config.pushHost, pushPort);
    }
    const handler = connectNodeAdapter({
      routes: edgeRoutes({ clients, session, logger, onDeviceRemoved }),
      // Stated, not left to the default: the streams' frame writer leaves exactly the frames
      // Connect would compress to Connect (frame-writer.ts).
      compressMinBytes: COMPRESS_MIN_BYTES,
      // Connect's default is 4 GiB, buffered as announced. The contract's limit counts binary
      // encoding, which a decoded message is measured in (message-size.ts); this bounds what a
      // JSON request may take on the wire.
      readMaxBytes: CLIENT_REQUEST_MAX_WIRE_BYTES,
      // Outermost first: the call's span and duration (so the error boundary's log lines carry its
      // trace id and both see the status the client gets); every error passes the error boundary; authentication
      // comes before validation, so a caller without a valid token learns nothing about the
      // request schema.
      interceptors: [
        createTelemetryInterceptor({ forceTrace: forcedSend }),
        createErrorInterceptor(logger),
        createAuthInterceptor(auth.verifier),
        validationInterceptor,
      ],
      fallback: healthFallback(() => hub.state === "serving"),
    });
    const sessions = withDirectSession(
      {
        session: (requests, ctx) => session.session(requests, ctx),
        verifier: auth.verifier,
        logger,
        readMaxBytes: CLIENT_MESSAGE_MAX_BYTES,
      },
      handler,
    );
    server = await listenHttp(withTransportAbort(sessions), config.host, config.port);
  } catch (err) {
    await pushServer?.shutdown(0);
    clients.close();
    throw err;
  }
  const http = server;
  const url = `http://${hostPort(config.host, http.port)}`;
  identity.hostId = config.hostId ?? defaultHostId(config.host, http.port);
  identity.publicUrl = config.publicUrl ?? url;

  try {
    await keeper.start();
  } catch (err) {
    await http.close(0);
    await pushServer?.shutdown(0);
    clients.close();
    throw err;
  }
  logger.info(
    {
      url,
      host_id: identity.hostId,
      push_address: pushAddress || undefined,
      registry: registry !== undefined,
    },
    "edge listening",
  );

  const stopObservingStreams = observeStreams(hub);

  // A device that opens a stream on another host takes its route there: its older stream here is
  // closed (REPLACED) as soon as the registry says so, as a second stream on this host would be.
  const routeWatch = await registry
    ?.watch((event) => {
      if (event.kind !== "route_put" || event.route.hostId === identity.hostId) return;
      const { userId, deviceId, revision } = event.route;
      if (hub.routedElsewhere({ userId, deviceId }, revision)) {
        logger.info(
          { user_id: userId, device_id: deviceId, host_id: event.route.hostId },
          "device moved to another host",
        );
      }
    })
    .catch((err: unknown) => {
      logger.warn({ err }, "could not watch device routes; replaced streams close at their next push");
      return undefined;
    });

  // Load for placement, and the presence refresh of streams without client heartbeats.
  let reportedLoad = 0;
  const loadTimer = setInterval(() => {
    if (hub.size === reportedLoad || hub.state !== "serving") return;
    const load = hub.size;
    keeper
      .current()
      .then((lease) => lease.update({ load }))
      .then(
        () => {
          reportedLoad = load;
        },
        (err: unknown) => logger.warn({ err }, "could not update the edge's load"),
      );
  }, options.loadReportIntervalMs ?? 5_000);
  loadTimer.unref();
  const presenceTimer = setInterval(() => hub.refreshPresence(), config.heartbeatIntervalMs);
  presenceTimer.unref();

  let stopping: Promise<void> | undefined;
  return {
    url,
    hostId: identity.hostId,
    port: http.port,
    pushAddress,
    get streamCount() {
      return hub.size;
    },
    stop() {
      stopping ??= (async () => {
        clearInterval(loadTimer);
        await routeWatch?.close().catch(() => {});
        const lease = keeper.stop();
        // Draining: Locate sends nobody here, delivery expects routes to move, pushes continue.
        await lease
          ?.update({ state: "draining" })
          .catch((err: unknown) => logger.warn({ err }, "could not mark the edge draining"));
        await directory.refresh();
        const others = directory.otherHostsNow();
        logger.info({ streams: hub.size, other_hosts: others.length }, "edge draining");
        await hub.drain({
          // The hosts as read when the drain began; each device to its rendezvous host among them.
          reconnectUrlFor: (device) => rendezvousHost(device, directory.otherHostsNow())?.publicUrl,
          timeoutMs: config.drainTimeoutMs,
          retryAfterMs: SHUTDOWN_RETRY_AFTER_MS,
        });
        clearInterval(presenceTimer);
        // Running calls finish (or are cut after the grace period) before their channels close.
        await http.close();
        await pushServer?.shutdown();
        await presence.flush();
        await lease
          ?.revoke()
          .catch((err: unknown) => logger.warn({ err }, "could not revoke the edge's lease"));
        clients.close();
        stopObservingStreams();
        logger.info({ host_id: identity.hostId }, "edge stopped");
      })();
      return stopping;
    },
  };
}

/** A unary Send whose message asks for `force_trace`: its call span is sampled whatever the ratio. */
function forcedSend(req: UnaryRequest | StreamRequest): boolean {
  if (req.stream || req.service.typeName !== SessionService.typeName) return false;
  if (req.method.name !== SessionService.method.send.name) return false;
  return (req.message as Partial<SendRequest>).message?.forceTrace === true;
}

/** host:port, with brackets around an IPv6 literal. */
function hostPort(host: string, port: number): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A host id the registry accepts (`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`), from where the edge listens. */
function defaultHostId(host: string, port: number): string {
  return `edge-${host.replace(/[^A-Za-z0-9_.-]/g, "-")}-${port}`.slice(0, 128);
}

/**
 * Plain HTTP probes for load balancers that cannot speak gRPC health: /healthz while the process
 * lives, /readyz only while it takes new streams (503 once it drains).
 */
function healthFallback(serving: () => boolean): NodeHandlerFn {
  return (req, res) => {
    if (req.method === "GET" && (req.url === "/healthz" || req.url === "/readyz")) {
      const ok = req.url === "/healthz" || serving();
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "ok\n" : "draining\n");
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found: Parley's edge serves Connect, gRPC and gRPC-Web under /parley.edge.v1.*\n");
  };
}
