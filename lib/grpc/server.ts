import type { DescService, MessageShape } from "@bufbuild/protobuf";
import type { Validator } from "@bufbuild/protovalidate";
import type { ChannelOptions } from "nice-grpc";
import { createServer } from "nice-grpc";
import type { HealthState } from "nice-grpc-server-health";
import {
  HealthState as createHealthState,
  HealthDefinition,
  HealthServiceImpl,
} from "nice-grpc-server-health";
import { ServerReflectionService } from "nice-grpc-server-reflection";
import type { Logger } from "../logging.ts";
import { INTERNAL_MESSAGE_MAX_BYTES } from "../message-limits.ts";
import { createAccessLogMiddleware } from "./access-log.ts";
import { createErrorMappingMiddleware } from "./error-mapping.ts";
import { serverMetricsMiddleware } from "./metrics.ts";
import { createReflection, ServerReflectionV1AlphaService } from "./reflection.ts";
import type { GrpcServiceImplementation } from "./service-definition.ts";
import { toServiceDefinition } from "./service-definition.ts";
import type { TerminatorContext } from "./terminator.ts";
import { createTerminator } from "./terminator.ts";
import { serverTracingMiddleware } from "./tracing.ts";
import type { RequestCheck } from "./validation.ts";
import { createValidationMiddleware } from "./validation.ts";

/**
 * Hand-written request checks that replace protovalidate for some methods of a service (by
 * `localName`); each must enforce every rule of its request and fail as protovalidate would
 * (`RequestCheck` in validation.ts). Methods without one keep protovalidate.
 */
export type GrpcRequestChecks<S extends DescService> = {
  readonly [K in keyof S["method"]]?: (request: MessageShape<S["method"][K]["input"]>) => void;
};

/** A generated service and the handlers that implement it. */
export type GrpcServiceRegistration<S extends DescService = DescService> = {
  readonly service: S;
  readonly implementation: GrpcServiceImplementation<S, TerminatorContext>;
  readonly checks?: GrpcRequestChecks<S>;
};

/**
 * Pairs a service with its implementation, checking the handlers against that service's types,
 * for lists of services built apart from `createGrpcServer` (each service's `services()`).
 * `checks` replace protovalidate for the methods they name (see GrpcRequestChecks).
 */
export function grpcService<S extends DescService>(
  service: S,
  implementation: GrpcServiceImplementation<S, TerminatorContext>,
  checks?: GrpcRequestChecks<S>,
): GrpcServiceRegistration {
  return { service, implementation, ...(checks === undefined ? {} : { checks }) } as GrpcServiceRegistration;
}

/** The registrations' request checks by method path. */
function requestChecks(services: readonly GrpcServiceRegistration[]): Map<string, RequestCheck> {
  const checks = new Map<string, RequestCheck>();
  for (const { service, checks: byName } of services) {
    if (byName === undefined) continue;
    for (const method of service.methods) {
      const check = (byName as Record<string, RequestCheck | undefined>)[method.localName];
      if (check !== undefined) checks.set(`/${service.typeName}/${method.name}`, check);
    }
  }
  return checks;
}

export type GrpcServerOptions<T extends readonly DescService[] = readonly DescService[]> = {
  /** The process name, for logs. */
  readonly name: string;
  /** Each entry's handlers are checked against its own service's request and response types. */
  readonly services: { readonly [K in keyof T]: GrpcServiceRegistration<T[K]> };
  readonly logger: Logger;
  /** A validator with extra predefined rules; the default knows Parley's. */
  readonly validator?: Validator;
  /** How long `shutdown()` lets running calls finish before cancelling them. Default 10 s. */
  readonly shutdownTimeoutMs?: number;
  readonly channelOptions?: ChannelOptions;
};

export type GrpcServer = {
  /** Binds `host:port` (port 0 picks a free one) and resolves to the bound port. */
  listen(host: string, port: number): Promise<number>;
  /**
   * Reports NOT_SERVING, ends calls that opted into termination, lets the others finish for up
   * to `timeoutMs`, then cancels what is left.
   */
  shutdown(timeoutMs?: number): Promise<void>;
  /** Health of each service (by full name) and of the server (""): flip it to drain traffic. */
  readonly health: HealthState;
};

/**
 * A gRPC server for some of Parley's services with what every process needs: tracing, RED
 * metrics (`rpc.server.call.duration`), one log line per RPC, the one error mapping, validation
 * of every request (protovalidate, or a registration's hand-written check for a method), `grpc.health.v1`
 * and server reflection (v1 and v1alpha).
 */
export function createGrpcServer<const T extends readonly DescService[]>(
  options: GrpcServerOptions<T>,
): GrpcServer {
  const { logger } = options;
  const services = options.services as readonly GrpcServiceRegistration[];
  const descriptors = services.map((s) => s.service);
  const terminator = createTerminator();
  const health = createHealthState();

  // Attached first runs first: tracing must wrap logging so each log line carries the trace id,
  // and logging and metrics must wrap the error mapping so they see the final status code.
  const server = createServer({
    "grpc.max_receive_message_length": INTERNAL_MESSAGE_MAX_BYTES,
    ...options.channelOptions,
  })
    .use(serverTracingMiddleware)
    .use(serverMetricsMiddleware)
    .use(createAccessLogMiddleware(logger.child({ component: "grpc" })))
    .use(createErrorMappingMiddleware(logger))
    .use(createValidationMiddleware(descriptors, options.validator, requestChecks(services)))
    .use(terminator.middleware);

  for (const { service, implementation } of services) {
    server.add(toServiceDefinition(service), implementation);
    health.setStatus("healthy", service.typeName);
  }
  health.setStatus("healthy", "");
  server.add(HealthDefinition, HealthServiceImpl(health));
  const reflection = createReflection(descriptors);
  server.add(ServerReflectionService, reflection);
  server.add(ServerReflectionV1AlphaService, reflection);

  let stopping: Promise<void> | undefined;

  return {
    health,
    async listen(host, port) {
      // IPv6 literals need brackets in a host:port address.
      const address = host.includes(":") && !host.startsWith("[") ? `[${host}]:${port}` : `${host}:${port}`;
      const bound = await server.listen(address);
      logger.info({ server: options.name, address: host, port: bound }, "grpc server listening");
      return bound;
    },
    shutdown(timeoutMs = options.shutdownTimeoutMs ?? 10_000) {
      stopping ??= (async () => {
        for (const { service } of services) {
          health.setStatus("unhealthy", service.typeName);
        }
        health.setStatus("unhealthy", "");
        terminator.terminate();
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<"timeout">((resolve) => {
          timer = setTimeout(() => resolve("timeout"), timeoutMs);
        });
        const outcome = await Promise.race([server.shutdown().then(() => "done" as const), timedOut]);
        clearTimeout(timer);
        if (outcome === "timeout") {
          logger.warn(
            { server: options.name, timeout_ms: timeoutMs },
            "grpc calls still running, cancelling them",
          );
          server.forceShutdown();
        }
        logger.info({ server: options.name }, "grpc server stopped");
      })();
      return stopping;
    },
  };
}
