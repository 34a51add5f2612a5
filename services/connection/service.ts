import type { DatabaseSync } from "node:sqlite";
import { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import type { Broker } from "../../lib/broker/broker.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import type { Logger } from "../../lib/logging.ts";
import { countRejections } from "../../lib/metrics.ts";
import { startOutboxRelay } from "../../lib/outbox.ts";
import type { RateLimiter, RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import { createKeyServiceDeviceDirectory } from "./adapters/grpc/key-service-device-directory.ts";
import { createSqliteConnectionStore } from "./adapters/sqlite/sqlite-connection-store.ts";
import type { ConnectionDomain } from "./domain/connection-domain.ts";
import { createConnectionDomain } from "./domain/connection-domain.ts";
import type { ConnectionStore } from "./domain/connection-store.ts";
import type { ConnectionDomainDeps } from "./domain/deps.ts";
import type { DeviceDirectory } from "./domain/device-directory.ts";
import { encodeConnectionEvent } from "./event-encoder.ts";
import { createConnectionHandlers } from "./handlers.ts";

/** Default gRPC port of the connection service in the cluster profile (PARLEY_CONNECTION_PORT). */
export const CONNECTION_DEFAULT_PORT = 7101;

/**
 * New connection requests per user: 100 per hour, as a token bucket (a burst of 100, then one
 * every 36 s). Idempotent repeats and accepts do not count.
 */
export const DEFAULT_REQUEST_LIMIT: RateRule = { burst: 100, perSecond: 100 / 3_600 };

/** The domain's deps, with the protobuf event encoder as default. */
export type ConnectionServiceDeps = Omit<ConnectionDomainDeps, "encodeEvent"> & {
  readonly encodeEvent?: ConnectionDomainDeps["encodeEvent"];
};

/** The gRPC services the connection process serves, over a domain wired to the given adapters. */
export function connectionServices(
  deps: ConnectionServiceDeps | ConnectionDomain,
): GrpcServiceRegistration[] {
  const domain =
    "contacts" in deps ? deps : createConnectionDomain({ encodeEvent: encodeConnectionEvent, ...deps });
  return [grpcService(ConnectionService, createConnectionHandlers(domain))];
}

export interface ConnectionServiceOptions {
  /** Where contacts and groups live: a ConnectionStore, an open SQLite database, or a SQLite file. */
  readonly store: ConnectionStore | { readonly db: DatabaseSync } | { readonly path: string };
  /** Where the events go, through the store's outbox. */
  readonly broker: Broker;
  readonly logger: Logger;
  /**
   * Devices shown with ACCEPTED connections: a DeviceDirectory, or the key service's gRPC address
   * (host:port). Without either, connections carry no devices.
   */
  readonly devices?: DeviceDirectory | { readonly keyAddress: string };
  /**
   * Limits new connection requests (the cluster's Redis limiter, shared by every replica; the
   * caller's to close). Default: DEFAULT_REQUEST_LIMIT per user in memory (on `clock`), closed by
   * stop().
   */
  readonly requestLimiter?: RateLimiter;
  /** The clock (tests). */
  readonly clock?: () => Date;
}

export interface ConnectionServiceParts {
  readonly registrations: GrpcServiceRegistration[];
  /** The use cases, for in-process callers and tests. */
  readonly domain: ConnectionDomain;
  readonly store: ConnectionStore;
  /** Publishes what the outbox holds, then closes what it opened (store, key-service channel, limiter). */
  stop(): Promise<void>;
}

function isStore(store: ConnectionServiceOptions["store"]): store is ConnectionStore {
  return "commitPair" in store;
}

/**
 * The connection service with its embedded adapters: the SQLite store and its outbox relayed to
 * the broker, a request rate limiter (in memory unless passed in), and devices from the key
 * service. Both the embedded mesh and services/connection/main.ts start it this way.
 */
export function createConnectionService(options: ConnectionServiceOptions): ConnectionServiceParts {
  const ownsStore = !isStore(options.store);
  const store = isStore(options.store) ? options.store : createSqliteConnectionStore(options.store);
  const logger = options.logger.child({ component: "connection" });
  const keyDirectory =
    options.devices !== undefined && "keyAddress" in options.devices
      ? createKeyServiceDeviceDirectory(options.devices.keyAddress)
      : undefined;
  const devices = keyDirectory ?? (options.devices as DeviceDirectory | undefined);
  const clock = options.clock;
  const ownLimiter =
    options.requestLimiter === undefined
      ? createMemoryRateLimiter(
          DEFAULT_REQUEST_LIMIT,
          clock === undefined ? {} : { now: () => clock().getTime() },
        )
      : undefined;
  const relay = startOutboxRelay(store.outbox, options.broker, { logger });
  const domain = createConnectionDomain({
    store,
    encodeEvent: encodeConnectionEvent,
    requestLimiter: countRejections(
      options.requestLimiter ?? (ownLimiter as RateLimiter),
      "connection_request",
    ),
    onEventsWritten: () => relay.notify(),
    reportError: (err, message) => logger.warn({ err }, message),
    ...(devices === undefined ? {} : { devices }),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  return {
    registrations: connectionServices(domain),
    domain,
    store,
    async stop() {
      await relay.stop();
      keyDirectory?.close();
      ownLimiter?.close();
      if (ownsStore) await store.close();
    },
  };
}
