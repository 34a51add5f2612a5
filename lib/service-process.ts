import type { ConfigOf } from "./config.ts";
import { enumVar, loadConfig, portVar, stringVar } from "./config.ts";
import type { GrpcServiceRegistration } from "./grpc/server.ts";
import { createGrpcServer } from "./grpc/server.ts";
import type { Logger } from "./logging.ts";
import { createLogger, LOG_LEVELS } from "./logging.ts";
import type { MetricsEndpoint } from "./metrics.ts";
import { metricsConfigSpec, startMetricsEndpoint } from "./metrics.ts";
import type { StopTelemetry } from "./telemetry.ts";
import { startTelemetry } from "./telemetry.ts";

/** The variables every internal gRPC service reads: where to listen, and how much to log. */
export function grpcServiceConfigSpec(envPrefix: string, defaultPort: number) {
  return {
    host: stringVar(`PARLEY_${envPrefix}_HOST`, { default: "127.0.0.1" }),
    port: portVar(`PARLEY_${envPrefix}_PORT`, { default: defaultPort }),
    logLevel: enumVar("PARLEY_LOG_LEVEL", LOG_LEVELS, { default: "info" }),
  };
}

export type GrpcServiceConfig = ConfigOf<ReturnType<typeof grpcServiceConfigSpec>>;

/** A started server or edge: where it listens and how to stop it gracefully. */
export interface RunningService {
  readonly name: string;
  /** `host:port` for gRPC services, a URL for the edge. */
  readonly address: string;
  stop(): Promise<void>;
}

/** Starts one internal service's gRPC server (with health, reflection, validation, logging). */
export async function startGrpcService(options: {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly services: readonly GrpcServiceRegistration[];
  readonly logger: Logger;
}): Promise<RunningService> {
  const server = createGrpcServer({ name: options.name, services: options.services, logger: options.logger });
  const port = await server.listen(options.host, options.port);
  return { name: options.name, address: `${options.host}:${port}`, stop: () => server.shutdown() };
}

/**
 * The default PARLEY_METRICS_PORT of each process (its Prometheus endpoint): distinct, so the
 * cluster profile runs on one machine as it does on many; the embedded profile's one process uses
 * the edge's. 9464 is OpenTelemetry's registered Prometheus port.
 */
export const METRICS_DEFAULT_PORTS: Readonly<Record<string, number>> = {
  parley: 9464,
  edge: 9464,
  connection: 9465,
  key: 9466,
  sender: 9467,
  history: 9468,
  delivery: 9469,
};

/**
 * Runs a process until SIGTERM or SIGINT: telemetry first (so startup is traced), its Prometheus
 * endpoint (PARLEY_METRICS_HOST:PARLEY_METRICS_PORT, default METRICS_DEFAULT_PORTS[name]; 0 turns
 * it off), then `start`, then a graceful stop in reverse order. A configuration error ends the
 * process with exit code 78 (EX_CONFIG) and the list of bad variables, before anything listens.
 */
export async function runProcess(
  name: string,
  start: (logger: Logger) => Promise<readonly RunningService[]>,
  logLevel = process.env.PARLEY_LOG_LEVEL,
): Promise<void> {
  const level = LOG_LEVELS.find((l) => l === logLevel) ?? "info";
  const logger = createLogger(name, level);
  let stopTelemetry: StopTelemetry = async () => {};
  let metricsEndpoint: MetricsEndpoint | undefined;
  let running: readonly RunningService[];
  try {
    // Inside the try: a bad OTEL_TRACES_SAMPLER(_ARG) is a ConfigError like any other.
    stopTelemetry = startTelemetry({ serviceName: `parley-${name}` });
    const metricsConfig = loadConfig(metricsConfigSpec(METRICS_DEFAULT_PORTS[name] ?? 9464));
    if (metricsConfig.metricsPort !== 0) {
      metricsEndpoint = await startMetricsEndpoint({
        host: metricsConfig.metricsHost,
        port: metricsConfig.metricsPort,
      });
      logger.info({ url: metricsEndpoint.url }, "metrics endpoint listening");
    }
    running = await start(logger);
  } catch (err) {
    logger.fatal({ err }, `${name} failed to start`);
    await metricsEndpoint?.close();
    await stopTelemetry();
    process.exit(err instanceof Error && err.name === "ConfigError" ? 78 : 1);
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `${name} stopping`);
    for (const service of [...running].reverse()) await service.stop();
    // Last, so a scrape during the drain still answers.
    await metricsEndpoint?.close();
    await stopTelemetry();
    process.exit(0);
  };
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));
}

/** Loads a service's config from the environment (throws a ConfigError naming every bad variable). */
export function loadServiceConfig(envPrefix: string, defaultPort: number): GrpcServiceConfig {
  return loadConfig(grpcServiceConfigSpec(envPrefix, defaultPort));
}
