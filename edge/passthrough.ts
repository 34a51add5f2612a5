import type { DescField, DescMessage, DescMethod, DescService, MessageShape } from "@bufbuild/protobuf";
import { create, fromBinary, ScalarType, toBinary } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { ClientError } from "nice-grpc";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import { DeviceAddressSchema } from "../gen/parley/common/v1/address_pb.ts";
import { INTERNAL_ERROR_MESSAGE, ParleyError } from "../lib/errors.ts";
import type { GrpcCallOptions, GrpcServiceClient } from "../lib/grpc/client.ts";
import { ClientErrorWithTrailer, fromGrpcError, STATUS_DETAILS_KEY } from "../lib/grpc/grpc-error.ts";
import type { Logger } from "../lib/logging.ts";
import { callingDevice } from "./auth/interceptor.ts";

/**
 * Edge passthroughs: an edge method whose request is the internal request minus its caller field
 * (field 1), and whose response is the internal response (ContactService, ConversationService,
 * DeviceService, HistoryService).
 *
 * The copy is descriptor-driven: the edge request is encoded and decoded as the internal request
 * (shared fields have the same numbers and types), then field 1 is set from the token; the
 * internal response is encoded and decoded as the edge response. `planPassthrough` checks that
 * alignment field by field when the edge starts, so contract drift stops the edge at boot (and the
 * unit test in CI) instead of corrupting a request. Unknown fields are neither forwarded (a client
 * cannot smuggle in a field only the internal request knows) nor returned (an internal-only
 * response field never reaches a client).
 */

/** How the internal request names its caller: a user id, or the calling device. */
export type CallerField =
  | { readonly kind: "user_id"; readonly localName: string }
  | { readonly kind: "device"; readonly localName: string };

/** One edge method and the internal method it forwards to. */
export interface PassthroughRoute {
  readonly edge: DescMethod;
  readonly internal: DescMethod;
  readonly caller: CallerField;
}

/** The field number of the caller in every internal request an edge method forwards to. */
export const CALLER_FIELD_NUMBER = 1;

/**
 * Pairs every method of `edge` with its internal method (same name unless `methodNames` maps it)
 * and checks that they line up. Throws one Error listing every mismatch.
 */
export function planPassthrough(
  edge: DescService,
  internal: DescService,
  methodNames: Readonly<Record<string, string>> = {},
): PassthroughRoute[] {
  const problems: string[] = [];
  const routes: PassthroughRoute[] = [];
  for (const method of edge.methods) {
    const where = `${edge.typeName}/${method.name}`;
    const internalName = methodNames[method.name] ?? method.name;
    const target = internal.methods.find((m) => m.name === internalName);
    if (target === undefined) {
      problems.push(`${where}: ${internal.typeName} has no method ${internalName}`);
      continue;
    }
    if (method.methodKind !== "unary" || target.methodKind !== "unary") {
      problems.push(
        `${where}: only unary methods pass through (${method.methodKind} -> ${target.methodKind})`,
      );
      continue;
    }
    const caller = callerField(target.input);
    if (caller === undefined) {
      problems.push(
        `${where}: ${target.input.typeName} field ${CALLER_FIELD_NUMBER} must be the caller (string user_id or DeviceAddress device)`,
      );
    }
    if (method.input.fields.some((f) => f.number === CALLER_FIELD_NUMBER)) {
      problems.push(
        `${where}: ${method.input.typeName} must not have field ${CALLER_FIELD_NUMBER} (the caller)`,
      );
    }
    problems.push(
      ...fieldProblems(method.input, target.input),
      ...fieldProblems(method.output, target.output),
    );
    if (caller !== undefined) routes.push({ edge: method, internal: target, caller });
  }
  if (problems.length > 0) {
    throw new Error(
      `${edge.typeName} cannot pass through to ${internal.typeName}:\n  ${problems.join("\n  ")}`,
    );
  }
  return routes;
}

/**
 * What keeps `edge` from being read as `internal` on the wire: every field of the edge message
 * must exist in the internal one with the same number, name, kind, type and oneof. (Extra internal
 * fields are allowed here: in a request they stay unset, in a response they are dropped.)
 */
export function fieldProblems(edge: DescMessage, internal: DescMessage): string[] {
  const problems: string[] = [];
  for (const field of edge.fields) {
    const counterpart = internal.fields.find((f) => f.number === field.number);
    if (counterpart === undefined) {
      problems.push(
        `${edge.typeName}.${field.name} (${field.number}) has no field ${field.number} in ${internal.typeName}`,
      );
    } else if (fieldShape(field) !== fieldShape(counterpart)) {
      problems.push(
        `${edge.typeName}.${field.name} is [${fieldShape(field)}] but ${internal.typeName} field ${field.number} is [${fieldShape(counterpart)}]`,
      );
    }
  }
  return problems;
}

function fieldShape(field: DescField): string {
  const f = field as DescField & {
    readonly scalar?: unknown;
    readonly listKind?: unknown;
    readonly mapKind?: unknown;
    readonly mapKey?: unknown;
    readonly message?: DescMessage;
    readonly enum?: { readonly typeName: string };
  };
  return [
    f.name,
    f.fieldKind,
    f.listKind,
    f.mapKind,
    f.mapKey,
    f.scalar,
    f.message?.typeName,
    f.enum?.typeName,
    f.oneof?.name,
    f.presence,
  ]
    .map((part) => (part === undefined ? "" : String(part)))
    .join(" ");
}

function callerField(input: DescMessage): CallerField | undefined {
  const field = input.fields.find((f) => f.number === CALLER_FIELD_NUMBER);
  if (field === undefined || field.oneof !== undefined) return undefined;
  if (field.fieldKind === "scalar" && field.name === "user_id" && field.scalar === ScalarType.STRING) {
    return { kind: "user_id", localName: field.localName };
  }
  if (field.fieldKind === "message" && field.message.typeName === DeviceAddressSchema.typeName) {
    return { kind: "device", localName: field.localName };
  }
  return undefined;
}

// Unknown fields never cross the edge in either direction (see the file comment).
const WRITE = { writeUnknownFields: false } as const;
const READ = { readUnknownFields: false } as const;

/** The internal request of `route` for an edge request, acting as `device`. */
export function toInternalRequest(
  route: PassthroughRoute,
  request: MessageShape<DescMessage>,
  device: DeviceAddress,
): MessageShape<DescMessage> {
  const internalRequest = fromBinary(route.internal.input, toBinary(route.edge.input, request, WRITE), READ);
  // Set after decoding, so nothing the client sent under field 1 survives.
  (internalRequest as unknown as Record<string, unknown>)[route.caller.localName] =
    route.caller.kind === "user_id"
      ? device.userId
      : create(DeviceAddressSchema, { userId: device.userId, deviceId: device.deviceId });
  return internalRequest;
}

/** The edge response of `route` for an internal response (fields the edge lacks are dropped). */
export function toEdgeResponse(
  route: PassthroughRoute,
  response: MessageShape<DescMessage>,
): MessageShape<DescMessage> {
  return fromBinary(route.edge.output, toBinary(route.internal.output, response, WRITE), READ);
}

type UnaryCall = (
  request: MessageShape<DescMessage>,
  options: GrpcCallOptions,
) => Promise<MessageShape<DescMessage>>;

export interface PassthroughOptions {
  /** Edge method name -> internal method name, where they differ. */
  readonly methodNames?: Readonly<Record<string, string>>;
  readonly logger: Logger;
}

/**
 * The edge service `edge` as a passthrough to `internal` over `client`: each call acts as the
 * token's caller, keeps the client's deadline and cancellation, and fails with the internal
 * error's code, message, reason and field violations (see `toEdgeError`).
 */
export function createPassthroughService<E extends DescService, I extends DescService>(
  edge: E,
  internal: I,
  client: GrpcServiceClient<I>,
  options: PassthroughOptions,
): ServiceImpl<E> {
  const implementation: Record<string, unknown> = {};
  for (const route of planPassthrough(edge, internal, options.methodNames)) {
    const call = (client as unknown as Record<string, UnaryCall>)[route.internal.localName];
    if (call === undefined)
      throw new Error(`the ${internal.typeName} client has no ${route.internal.localName}`);
    implementation[route.edge.localName] = async (
      request: MessageShape<DescMessage>,
      ctx: HandlerContext,
    ) => {
      const internalRequest = toInternalRequest(route, request, callingDevice(ctx));
      const timeoutMs = ctx.timeoutMs();
      try {
        const response = await call(internalRequest, {
          signal: ctx.signal,
          // The client's own deadline when it set one; otherwise the internal client's default.
          ...(timeoutMs === undefined ? {} : { deadline: Math.max(0, timeoutMs) }),
        });
        return toEdgeResponse(route, response);
      } catch (err) {
        throw toEdgeError(err, ctx, route, options.logger);
      }
    };
  }
  return implementation as ServiceImpl<E>;
}

/**
 * What the client sees when the internal call fails:
 * - an error the internal service answered with (its status carries Parley's details) keeps its
 *   code, message, ErrorInfo reason and metadata, BadRequest violations and RetryInfo;
 * - `internal`, `unknown` and `data_loss` become the generic internal error (the cause is logged);
 * - a failure of the call itself (no details: unreachable service, deadline, transport) keeps a
 *   retryable code with a generic message, since grpc-js's own text names internal addresses;
 *   anything else of that kind is a fault of ours, so `internal`.
 */
export function toEdgeError(
  err: unknown,
  ctx: Pick<HandlerContext, "signal">,
  route: PassthroughRoute,
  logger: Logger,
): unknown {
  if (ctx.signal.aborted) {
    // The client went away or its deadline passed: whatever the internal call says is moot.
    const reason: unknown = ctx.signal.reason;
    return reason instanceof ConnectError && reason.code === Code.DeadlineExceeded
      ? new ParleyError(
          "deadline_exceeded",
          "DEADLINE_EXCEEDED",
          "the call's deadline passed before it completed",
          {
            cause: err,
          },
        )
      : new ParleyError("cancelled", "CANCELLED", "the call was cancelled", { cause: err });
  }
  if (!(err instanceof ClientError)) return err; // not a gRPC failure: a bug, reported as internal
  const parley = fromGrpcError(err);
  const generic = new ParleyError("internal", "INTERNAL", INTERNAL_ERROR_MESSAGE, { cause: err });
  if (parley.code === "internal" || parley.code === "unknown" || parley.code === "data_loss") return generic;
  const answered =
    err instanceof ClientErrorWithTrailer && err.trailer?.get(STATUS_DETAILS_KEY) !== undefined;
  if (answered) return parley;
  let retryable: ParleyError;
  switch (parley.code) {
    case "unavailable":
      retryable = new ParleyError(
        "unavailable",
        "SERVICE_UNAVAILABLE",
        "a backing service is unavailable: retry with backoff",
        {
          cause: err,
        },
      );
      break;
    case "deadline_exceeded":
      retryable = new ParleyError(
        "deadline_exceeded",
        "DEADLINE_EXCEEDED",
        "a backing service did not answer in time: retry with backoff",
        { cause: err },
      );
      break;
    default:
      return generic; // logged with its cause by the error interceptor
  }
  // Expected in an outage, so not an unexpected error, but worth a line naming the service.
  logger.warn(
    {
      rpc: `${route.edge.parent.typeName}/${route.edge.name}`,
      upstream: `${route.internal.parent.typeName}/${route.internal.name}`,
      code: parley.code,
      err,
    },
    "internal call failed",
  );
  return retryable;
}
