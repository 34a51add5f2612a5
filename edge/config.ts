import type { ConfigOf } from "../lib/config.ts";
import { enumVar, loadConfig, optional, portVar, stringVar, urlVar } from "../lib/config.ts";
import { LOG_LEVELS } from "../lib/logging.ts";

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
};

export type EdgeConfig = ConfigOf<typeof edgeConfigSpec>;

export function loadEdgeConfig(env: Readonly<Record<string, string | undefined>> = process.env): EdgeConfig {
  return loadConfig(edgeConfigSpec, env);
}
