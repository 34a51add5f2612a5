import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import type { Any } from "@bufbuild/protobuf/wkt";
import { anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import type { BadRequest, ErrorInfo, RetryInfo } from "../gen/google/rpc/error_details_pb.ts";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import type { Status } from "../gen/google/rpc/status_pb.ts";
import { StatusSchema } from "../gen/google/rpc/status_pb.ts";

/**
 * The canonical status codes, spelled as Connect spells them. The numbers are gRPC's, which Connect
 * shares, so one table serves both stacks.
 */
export const ErrorCode = {
  cancelled: 1,
  unknown: 2,
  invalid_argument: 3,
  deadline_exceeded: 4,
  not_found: 5,
  already_exists: 6,
  permission_denied: 7,
  resource_exhausted: 8,
  failed_precondition: 9,
  aborted: 10,
  out_of_range: 11,
  unimplemented: 12,
  internal: 13,
  unavailable: 14,
  data_loss: 15,
  unauthenticated: 16,
} as const;

export type ErrorCode = keyof typeof ErrorCode;

/** The `google.rpc.ErrorInfo` domain of every reason Parley defines. */
export const ERROR_DOMAIN = "parley.dev";

/** One invalid field of a request, as `google.rpc.BadRequest.FieldViolation` carries it. */
export type FieldViolation = {
  /** Path of the field in the request, e.g. `envelope.shared.ciphertext` or `recipients[3].user_id`. */
  readonly field: string;
  readonly description: string;
  /** UPPER_SNAKE reason of this violation, if it has one (protovalidate's rule id, uppercased). */
  readonly reason?: string;
};

export type ParleyErrorOptions = {
  /** Extra facts for the caller (ErrorInfo metadata); keys lowerCamelCase, never secrets. */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly violations?: readonly FieldViolation[];
  /** How long the caller should wait before retrying (sent as `google.rpc.RetryInfo`). */
  readonly retryDelayMs?: number;
  /** Logged by the server, never sent to the caller. */
  readonly cause?: unknown;
};

/**
 * The one error type domain code throws. `reason` is the stable contract callers branch on
 * (UPPER_SNAKE, at most 63 characters, per AIP-193); `message` is for humans and may change.
 */
export class ParleyError extends Error {
  override readonly name = "ParleyError";
  readonly code: ErrorCode;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly violations: readonly FieldViolation[];
  readonly retryDelayMs: number | undefined;

  constructor(code: ErrorCode, reason: string, message: string, options: ParleyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = reason;
    this.metadata = options.metadata ?? {};
    this.violations = options.violations ?? [];
    this.retryDelayMs = options.retryDelayMs;
  }
}

export function isParleyError(value: unknown): value is ParleyError {
  return value instanceof ParleyError;
}

type Factory = (reason: string, message: string, options?: ParleyErrorOptions) => ParleyError;

function factory(code: ErrorCode): Factory {
  return (reason, message, options) => new ParleyError(code, reason, message, options);
}

export const invalidArgument: Factory = factory("invalid_argument");
export const notFound: Factory = factory("not_found");
export const alreadyExists: Factory = factory("already_exists");
export const permissionDenied: Factory = factory("permission_denied");
export const failedPrecondition: Factory = factory("failed_precondition");
export const resourceExhausted: Factory = factory("resource_exhausted");
export const unauthenticated: Factory = factory("unauthenticated");
export const unavailable: Factory = factory("unavailable");
export const unimplemented: Factory = factory("unimplemented");
export const aborted: Factory = factory("aborted");
export const deadlineExceeded: Factory = factory("deadline_exceeded");
export const internal: Factory = factory("internal");

/** The message every unexpected error is reduced to, so nothing about its cause leaks. */
export const INTERNAL_ERROR_MESSAGE = "internal error";

/**
 * Turns anything thrown into the ParleyError that is sent. Only a ParleyError keeps its message;
 * anything else is unexpected and becomes `internal` with a fixed message, keeping the original as
 * `cause` for the log.
 */
export function toParleyError(err: unknown): ParleyError {
  if (err instanceof ParleyError) {
    return err;
  }
  return new ParleyError("internal", "INTERNAL", INTERNAL_ERROR_MESSAGE, { cause: err });
}

/** Whether an error is a bug or an outage to log with its cause, rather than an expected answer. */
export function isUnexpectedError(err: unknown): boolean {
  return !(err instanceof ParleyError) || err.code === "internal" || err.code === "unknown";
}

/** Status details sent beside a code and message, as typed messages ready to pack. */
export type ErrorDetail =
  | { readonly desc: typeof ErrorInfoSchema; readonly value: ErrorInfo }
  | { readonly desc: typeof BadRequestSchema; readonly value: BadRequest }
  | { readonly desc: typeof RetryInfoSchema; readonly value: RetryInfo };

/**
 * The detail messages of an error: always an ErrorInfo, a BadRequest when fields are invalid and a
 * RetryInfo when the caller should back off. Both RPC stacks send exactly these.
 */
export function errorDetails(err: ParleyError): ErrorDetail[] {
  const details: ErrorDetail[] = [
    {
      desc: ErrorInfoSchema,
      value: create(ErrorInfoSchema, {
        reason: err.reason,
        domain: ERROR_DOMAIN,
        metadata: { ...err.metadata },
      }),
    },
  ];
  if (err.violations.length > 0) {
    details.push({
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: err.violations.map((v) => ({
          field: v.field,
          description: v.description,
          reason: v.reason ?? "",
        })),
      }),
    });
  }
  if (err.retryDelayMs !== undefined) {
    const ms = Math.max(0, Math.round(err.retryDelayMs));
    details.push({
      desc: RetryInfoSchema,
      value: create(RetryInfoSchema, {
        retryDelay: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 },
      }),
    });
  }
  return details;
}

/** The `google.rpc.Status` of an error, as gRPC sends it in `grpc-status-details-bin`. */
export function toStatus(err: ParleyError): Status {
  return create(StatusSchema, {
    code: ErrorCode[err.code],
    message: err.message,
    details: errorDetails(err).map((d) => anyPack(d.desc as DescMessage, d.value)),
  });
}

const codeByNumber = new Map<number, ErrorCode>(
  Object.entries(ErrorCode).map(([name, num]) => [num, name as ErrorCode]),
);

/** The code name of a gRPC/Connect status number; numbers outside the table are `unknown`. */
export function errorCodeFromNumber(code: number): ErrorCode {
  return codeByNumber.get(code) ?? "unknown";
}

/**
 * Rebuilds a ParleyError from what a peer sent, so callers (the edge, tests) branch on `reason` the
 * same way whichever stack the error crossed. Without an ErrorInfo the reason is the code name.
 */
export function parleyErrorFromStatus(
  code: number,
  message: string,
  details: readonly Any[],
  cause?: unknown,
): ParleyError {
  const errorCode = errorCodeFromNumber(code);
  const info = unpackFirst(details, ErrorInfoSchema);
  const badRequest = unpackFirst(details, BadRequestSchema);
  const retry = unpackFirst(details, RetryInfoSchema);
  const violations: FieldViolation[] =
    badRequest?.fieldViolations.map((v) =>
      v.reason === ""
        ? { field: v.field, description: v.description }
        : { field: v.field, description: v.description, reason: v.reason },
    ) ?? [];
  const delay = retry?.retryDelay;
  return new ParleyError(errorCode, info?.reason || errorCode.toUpperCase(), message, {
    metadata: info?.metadata ?? {},
    violations,
    ...(delay === undefined ? {} : { retryDelayMs: Number(delay.seconds) * 1000 + delay.nanos / 1_000_000 }),
    cause,
  });
}

function unpackFirst<Desc extends DescMessage>(
  details: readonly Any[],
  desc: Desc,
): MessageShape<Desc> | undefined {
  for (const any of details) {
    try {
      const unpacked = anyUnpack(any, desc);
      if (unpacked !== undefined) {
        return unpacked;
      }
    } catch {
      // A detail we cannot decode is skipped: details are advisory, the code is what matters.
    }
  }
  return undefined;
}
