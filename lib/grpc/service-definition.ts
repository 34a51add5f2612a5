import type { DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { CallContext, Client, MethodDefinition, ServiceImplementation } from "nice-grpc";

type IsRequestStream<K> = K extends "client_streaming" | "bidi_streaming" ? true : false;
type IsResponseStream<K> = K extends "server_streaming" | "bidi_streaming" ? true : false;

/**
 * The nice-grpc definition of one method. Callers and handlers may pass init objects (plain
 * objects with any subset of fields) and always receive full messages, as protobuf-es intends.
 */
export type GrpcMethodDefinition<M extends DescMethod> = MethodDefinition<
  MessageInitShape<M["input"]>,
  MessageShape<M["input"]>,
  MessageInitShape<M["output"]>,
  MessageShape<M["output"]>,
  IsRequestStream<M["methodKind"]>,
  IsResponseStream<M["methodKind"]>
>;

/** A nice-grpc service definition keyed by each method's `localName` (`sendMessage`). */
export type GrpcServiceDefinition<S extends DescService> = {
  [K in keyof S["method"]]: GrpcMethodDefinition<S["method"][K]>;
};

/** What a server implements for a generated service: one typed handler per method. */
export type GrpcServiceImplementation<S extends DescService, CallContextExt = object> = ServiceImplementation<
  GrpcServiceDefinition<S>,
  CallContextExt
>;

/** A typed nice-grpc client of a generated service. */
export type GrpcClient<S extends DescService, CallOptionsExt = object> = Client<
  GrpcServiceDefinition<S>,
  CallOptionsExt
>;

/** The call context handlers receive. */
export type GrpcCallContext = CallContext;

const cache = new WeakMap<DescService, unknown>();

/**
 * Turns a protobuf-es v2 service descriptor into a nice-grpc service definition, so the mesh
 * has one code generator (protoc-gen-es) and one set of message types for gRPC and Connect alike.
 */
export function toServiceDefinition<S extends DescService>(service: S): GrpcServiceDefinition<S> {
  const cached = cache.get(service);
  if (cached !== undefined) {
    return cached as GrpcServiceDefinition<S>;
  }
  const definition: Record<string, MethodDefinition<unknown, unknown, unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = toMethodDefinition(service, method);
  }
  cache.set(service, definition);
  return definition as GrpcServiceDefinition<S>;
}

function toMethodDefinition(
  service: DescService,
  method: DescMethod,
): MethodDefinition<unknown, unknown, unknown, unknown> {
  const { input, output } = method;
  const idempotencyLevel = idempotencyOf(method);
  return {
    path: `/${service.typeName}/${method.name}`,
    requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
    responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
    // create() returns a message of the right type unchanged, so passing messages costs nothing.
    requestSerialize: (value) => toBinary(input, create(input, value as MessageInitShape<typeof input>)),
    requestDeserialize: (bytes) => fromBinary(input, bytes),
    responseSerialize: (value) => toBinary(output, create(output, value as MessageInitShape<typeof output>)),
    responseDeserialize: (bytes) => fromBinary(output, bytes),
    // The retry middleware reads this to decide what is safe to retry.
    options: idempotencyLevel === undefined ? {} : { idempotencyLevel },
  };
}

function idempotencyOf(method: DescMethod): "IDEMPOTENT" | "NO_SIDE_EFFECTS" | undefined {
  switch (method.idempotency) {
    case MethodOptions_IdempotencyLevel.IDEMPOTENT:
      return "IDEMPOTENT";
    case MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS:
      return "NO_SIDE_EFFECTS";
    default:
      return undefined;
  }
}
