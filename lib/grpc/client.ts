import type { DescService } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type {
  CallOptions,
  Channel,
  ChannelOptions,
  ClientMiddleware,
  ClientMiddlewareCall,
  Metadata,
} from "nice-grpc";
import { ClientError, createChannel, createClientFactory, Status } from "nice-grpc";
import type { DeadlineOptions } from "nice-grpc-client-middleware-deadline";
import { deadlineMiddleware } from "nice-grpc-client-middleware-deadline";
import type { RetryOptions } from "nice-grpc-client-middleware-retry";
import { retryMiddleware } from "nice-grpc-client-middleware-retry";
import { INTERNAL_MESSAGE_MAX_BYTES } from "../message-limits.ts";
import { ClientErrorWithTrailer } from "./grpc-error.ts";
import { clientMetricsMiddleware } from "./metrics.ts";
import type { GrpcClient } from "./service-definition.ts";
import { toServiceDefinition } from "./service-definition.ts";
import { clientTracingMiddleware } from "./tracing.ts";

/** Per-call options of Parley clients: nice-grpc's, plus `deadline` and the retry knobs. */
export type GrpcCallOptions = CallOptions & DeadlineOptions & RetryOptions;

/** A typed client of a generated service, as `createGrpcClient` makes it. */
export type GrpcServiceClient<S extends DescService> = GrpcClient<S, DeadlineOptions & RetryOptions>;

export type GrpcChannelOptions = {
  /**
   * `round_robin` (default) spreads calls over every address a DNS name resolves to, which is
   * how the cluster balances across pods behind a headless Service; `pick_first` sticks to one.
   */
  readonly loadBalancing?: "round_robin" | "pick_first";
  readonly channelOptions?: ChannelOptions;
};

export type GrpcClientOptions = GrpcChannelOptions & {
  /** Deadline of every call unless the call sets its own, in ms. Default 5 000. */
  readonly defaultDeadlineMs?: number;
  /** Attempts after the first for retried calls. Default 2. */
  readonly retryMaxAttempts?: number;
  /** First backoff in ms, doubled each attempt with jitter. Default 50. */
  readonly retryBaseDelayMs?: number;
  readonly retryMaxDelayMs?: number;
};

/** Opens a channel to `address` (`host:port`, or `dns:///name:port` to balance over DNS). */
export function createGrpcChannel(address: string, options: GrpcChannelOptions = {}): Channel {
  const serviceConfig = { loadBalancingConfig: [{ [options.loadBalancing ?? "round_robin"]: {} }] };
  return createChannel(address, undefined, {
    "grpc.service_config": JSON.stringify(serviceConfig),
    "grpc.max_receive_message_length": INTERNAL_MESSAGE_MAX_BYTES,
    ...options.channelOptions,
  });
}

/**
 * nice-grpc's ClientError drops the trailer, and with it `grpc-status-details-bin`; this keeps
 * it on the error (a ClientErrorWithTrailer) so `fromGrpcError` can read reason and violations.
 */
const keepTrailerMiddleware: ClientMiddleware = async function* keepTrailer<Req, Res>(
  call: ClientMiddlewareCall<Req, Res>,
  options: CallOptions,
) {
  let trailer: Metadata | undefined;
  const { onTrailer } = options;
  try {
    return yield* call.next(call.request, {
      ...options,
      onTrailer(received) {
        trailer = received;
        onTrailer?.(received);
      },
    });
  } catch (err) {
    if (err instanceof ClientError && !(err instanceof ClientErrorWithTrailer)) {
      throw new ClientErrorWithTrailer(err, trailer);
    }
    throw err;
  }
};

const channels = new WeakMap<object, Channel>();

/**
 * A typed client with tracing, call duration metrics, a default deadline and retries.
 *
 * Retries: only unary calls, only on UNAVAILABLE (the server was not reached or is draining),
 * and by default only for methods the proto marks `idempotency_level = IDEMPOTENT` or
 * `NO_SIDE_EFFECTS` (SendMessage is IDEMPOTENT: its client_message_id makes a repeat harmless).
 * Any other call may opt in with `{ retry: true }`. The deadline covers all attempts together.
 *
 * Pass an address to give the client its own channel, or a Channel to share one between
 * clients of the same process; `closeChannel` closes it either way.
 */
export function createGrpcClient<S extends DescService>(
  service: S,
  target: string | Channel,
  options: GrpcClientOptions = {},
): GrpcServiceClient<S> {
  const channel = typeof target === "string" ? createGrpcChannel(target, options) : target;
  // Attached first runs last: tracing wraps everything, the duration metric covers every attempt,
  // the deadline spans all attempts, and every attempt keeps its own trailer.
  const factory = createClientFactory()
    .use(keepTrailerMiddleware)
    .use(retryMiddleware)
    .use(deadlineMiddleware)
    .use(clientMetricsMiddleware)
    .use(clientTracingMiddleware);
  const retryDefaults: RetryOptions = {
    retryMaxAttempts: options.retryMaxAttempts ?? 2,
    retryBaseDelayMs: options.retryBaseDelayMs ?? 50,
    retryMaxDelayMs: options.retryMaxDelayMs ?? 1_000,
    retryableStatuses: [Status.UNAVAILABLE],
  };
  const defaults: Record<string, GrpcCallOptions> = {
    "*": { deadline: options.defaultDeadlineMs ?? 5_000, ...retryDefaults },
  };
  // nice-grpc reads its own definitions as grpc-js ones and drops method options on the way, so
  // the retry middleware never sees idempotency_level; turn it into per-method defaults instead.
  for (const method of service.methods) {
    if (
      method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN &&
      method.methodKind === "unary"
    ) {
      defaults[method.localName] = { retry: true };
    }
  }
  const client = factory.create(toServiceDefinition(service), channel, defaults) as GrpcServiceClient<S>;
  channels.set(client, channel);
  return client;
}

/** Closes the channel of a client made by `createGrpcClient` (or a channel itself). */
export function closeChannel(clientOrChannel: object): void {
  const channel = channels.get(clientOrChannel) ?? (isChannel(clientOrChannel) ? clientOrChannel : undefined);
  channel?.close();
}

function isChannel(value: object): value is Channel {
  return (
    typeof (value as Partial<Channel>).close === "function" &&
    typeof (value as Partial<Channel>).getTarget === "function"
  );
}
