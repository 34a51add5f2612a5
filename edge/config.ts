import { join } from "node:path";
import type { ConfigOf } from "../lib/config.ts";
import {
  durationVar,
  enumVar,
  intVar,
  loadConfig,
  optional,
  portVar,
  stringVar,
  urlVar,
} from "../lib/config.ts";
import { LOG_LEVELS } from "../lib/logging.ts";

/** The audience every client token must name unless PARLEY_EDGE_JWT_AUDIENCE says otherwise. */
export const DEFAULT_JWT_AUDIENCE = "parley";

/** The issuer of tokens the dev issuer mints, unless PARLEY_EDGE_JWT_ISSUER names another. */
export const DEV_ISSUER = "parley-dev";

/** File name of the dev issuer's private key inside a data folder. */
export const DEV_ISSUER_KEY_FILE_NAME = "dev-issuer.jwk";

/** The edge's environment. Internal service addresses are host:port of their gRPC servers. */
export const edgeConfigSpec = {
  host: stringVar("PARLEY_EDGE_HOST", { default: "127.0.0.1" }),
  port: portVar("PARLEY_EDGE_PORT", { default: 8080 }),
  // What clients are told to connect to (Locate, Drain); defaults to http://host:port.
  publicUrl: optional(urlVar("PARLEY_EDGE_PUBLIC_URL", { protocols: ["http", "https"] })),
  hostId: optional(stringVar("PARLEY_EDGE_HOST_ID")),
  logLevel: enumVar("PARLEY_LOG_LEVEL", LOG_LEVELS, { default: "info" }),
  connectionAddress: stringVar("PARLEY_CONNECTION_ADDRESS", { default: "127.0.0.1:7101" }),
  keyAddress: stringVar("PARLEY_KEY_ADDRESS", { default: "127.0.0.1:7102" }),
  senderAddress: stringVar("PARLEY_SENDER_ADDRESS", { default: "127.0.0.1:7103" }),
  historyAddress: stringVar("PARLEY_HISTORY_ADDRESS", { default: "127.0.0.1:7104" }),
  deliveryAddress: stringVar("PARLEY_DELIVERY_ADDRESS", { default: "127.0.0.1:7105" }),
  // Client tokens (see edge/auth). Exactly one key source: the deployment's public keys, or the
  // dev issuer's key file (created on first start). Checked together when the edge starts.
  // A JWKS of Ed25519 public keys, inline (a value starting with "{") or the path of a JSON file.
  jwtPublicKeys: optional(stringVar("PARLEY_EDGE_JWT_PUBLIC_KEYS")),
  // Required with PARLEY_EDGE_JWT_PUBLIC_KEYS; the dev issuer defaults to DEV_ISSUER.
  jwtIssuer: optional(stringVar("PARLEY_EDGE_JWT_ISSUER")),
  jwtAudience: stringVar("PARLEY_EDGE_JWT_AUDIENCE", { default: DEFAULT_JWT_AUDIENCE }),
  jwtClockToleranceMs: durationVar("PARLEY_EDGE_JWT_CLOCK_TOLERANCE", { default: 30_000 }),
  devIssuerKeyFile: optional(stringVar("PARLEY_EDGE_DEV_ISSUER_KEY_FILE")),
  // The internal EdgePushService (gRPC) delivery pushes to. Bind address, and the host:port
  // written in the registry for delivery to dial (defaults to pushHost:<bound port>; set it to the
  // pod IP or a DNS name when binding 0.0.0.0).
  pushHost: stringVar("PARLEY_EDGE_PUSH_HOST", { default: "127.0.0.1" }),
  pushPort: portVar("PARLEY_EDGE_PUSH_PORT", { default: 7110 }),
  pushAdvertiseAddress: optional(stringVar("PARLEY_EDGE_PUSH_ADVERTISE_ADDRESS")),
  // Device streams (edge/streams). Clients heartbeat at this interval (sent in ServerReady); a
  // Session silent for three intervals is closed (IDLE_TIMEOUT); quiet streams get a server
  // heartbeat each interval; presence is refreshed at this pace with a TTL of three intervals.
  heartbeatIntervalMs: durationVar("PARLEY_EDGE_HEARTBEAT_INTERVAL", { default: 20_000 }),
  // Frames that may wait to be written to one stream; a stream that falls further behind is
  // closed and its device resumes from its cursor (PushOutcome OVERLOADED).
  streamQueueLimit: intVar("PARLEY_EDGE_STREAM_QUEUE_LIMIT", { default: 512, min: 16, max: 100_000 }),
  // On shutdown: how long streams get, after their Drain frame, to move before SHUTDOWN closes them.
  drainTimeoutMs: durationVar("PARLEY_EDGE_DRAIN_TIMEOUT", { default: 10_000 }),
  // The registry lease of this host: it and its device routes expire this long after the process
  // stops renewing it (crash, partition).
  leaseTtlMs: durationVar("PARLEY_EDGE_LEASE_TTL", { default: 10_000 }),
};

export type EdgeConfig = ConfigOf<typeof edgeConfigSpec>;

/** The part of the edge's config that decides how client tokens are verified. */
export type EdgeAuthConfig = Pick<
  EdgeConfig,
  "jwtPublicKeys" | "jwtIssuer" | "jwtAudience" | "jwtClockToleranceMs" | "devIssuerKeyFile"
>;

export function loadEdgeConfig(env: Readonly<Record<string, string | undefined>> = process.env): EdgeConfig {
  return loadConfig(edgeConfigSpec, env);
}

/** Where the dev issuer keeps its private key in a data folder (`<dataDir>/dev-issuer.jwk`). */
export function devIssuerKeyPath(dataDir: string): string {
  return join(dataDir, DEV_ISSUER_KEY_FILE_NAME);
}

/**
 * The auth settings of the embedded profile: the dev issuer's key in `dataDir`; issuer, audience
 * and clock tolerance from the same variables (and defaults) the edge and `npm run token` read, so
 * the tokens that tool mints are the ones this edge accepts.
 */
export function devIssuerAuthConfig(
  dataDir: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): EdgeAuthConfig {
  const { jwtIssuer, jwtAudience, jwtClockToleranceMs } = edgeConfigSpec;
  return {
    ...loadConfig({ jwtIssuer, jwtAudience, jwtClockToleranceMs }, env),
    jwtPublicKeys: undefined,
    devIssuerKeyFile: devIssuerKeyPath(dataDir),
  };
}
