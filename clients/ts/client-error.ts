import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { Any } from "@bufbuild/protobuf/wkt";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { Status } from "../../gen/google/rpc/status_pb.ts";

/** One invalid field of a refused request, from `google.rpc.BadRequest`. */
export type FieldViolation = {
  readonly field: string;
  readonly description: string;
  /** The violation's own reason (protovalidate rule id), when the server gave one. */
  readonly reason?: string;
};

/** Reasons the SDK itself uses, beside the server's ErrorInfo reasons. */
export const ClientReason = {
  /** The app closed the client; pending work was abandoned. */
  CLIENT_CLOSED: "CLIENT_CLOSED",
  /** Another stream for this device took over (Close REPLACED); this client stopped. */
  SESSION_REPLACED: "SESSION_REPLACED",
  /** No frame arrived for three heartbeat intervals; the stream was dropped and reopened. */
  STREAM_STALLED: "STREAM_STALLED",
  /** The stream ended without a Close frame. */
  STREAM_ENDED: "STREAM_ENDED",
  /** The app's message handler threw; the message will be handed to it again. */
  HANDLER_FAILED: "HANDLER_FAILED",
  /** Saving the client state failed; it is kept in memory and saved again later. */
  STATE_SAVE_FAILED: "STATE_SAVE_FAILED",
  /**
   * The message is larger than the edge accepts (4 MiB encoded); it was not sent. The edge's own
   * refusal of a larger frame carries the same reason.
   */
  MESSAGE_TOO_LARGE: "MESSAGE_TOO_LARGE",
} as const;

/**
 * Every error the SDK surfaces: the status code, the stable UPPER_SNAKE `reason` from the server's
 * `google.rpc.ErrorInfo` (or the SDK's own, see ClientReason), field violations from
 * `google.rpc.BadRequest` and the server's `google.rpc.RetryInfo` delay. Branch on `code` and
 * `reason`, never on `message`.
 */
export class ParleyClientError extends Error {
  override readonly name = "ParleyClientError";
  readonly code: Code;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly violations: readonly FieldViolation[];
  readonly retryDelayMs: number | undefined;
  /**
   * True when no Parley server answered (network failure, proxy error, stream cut): the request may
   * or may not have been processed, so only idempotent requests may be repeated.
   */
  readonly transportFailure: boolean;

  constructor(
    code: Code,
    reason: string,
    message: string,
    options: {
      metadata?: Readonly<Record<string, string>>;
      violations?: readonly FieldViolation[];
      retryDelayMs?: number | undefined;
      transportFailure?: boolean;
      cause?: unknown;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = reason;
    this.metadata = options.metadata ?? {};
    this.violations = options.violations ?? [];
    this.retryDelayMs = options.retryDelayMs;
    this.transportFailure = options.transportFailure ?? false;
  }
}

/** Turns whatever a call threw (a ConnectError from any transport, or anything else) into one error model. */
export function toClientError(error: unknown): ParleyClientError {
  if (error instanceof ParleyClientError) {
    return error;
  }
  const connectError = ConnectError.from(error);
  return fromParts(
    connectError.code,
    connectError.rawMessage,
    (desc) => connectError.findDetails(desc)[0],
    connectError,
    true,
  );
}

/** The error carried in a `google.rpc.Status` (SendResult.error, FrameError.error). */
export function errorFromStatus(status: Status | undefined): ParleyClientError {
  const code = status === undefined || !(status.code in Code) ? Code.Unknown : (status.code as Code);
  const details = status?.details ?? [];
  return fromParts(code, status?.message ?? "", (desc) => unpackFirst(details, desc));
}

const TRANSPORT_CODES: ReadonlySet<Code> = new Set([
  Code.Unknown,
  Code.Internal,
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
]);

/**
 * Whether a send may be repeated with the same client_message_id: the contract allows it on
 * UNAVAILABLE and RESOURCE_EXHAUSTED. A transport failure and DEADLINE_EXCEEDED (a backing service
 * did not answer in time: the send may or may not have been accepted) are safe to repeat too,
 * because Send is idempotent on client_message_id: a retry of an accepted send gets its first id.
 */
export function isRetryableSendError(error: ParleyClientError): boolean {
  // A message too large is refused again however often it is sent.
  if (error.reason === ClientReason.MESSAGE_TOO_LARGE) return false;
  return (
    error.code === Code.Unavailable ||
    error.code === Code.ResourceExhausted ||
    error.code === Code.DeadlineExceeded ||
    error.transportFailure
  );
}

/** Whether a read-only call (Sync, ListMessages, Locate) may be repeated. */
export function isRetryableReadError(error: ParleyClientError): boolean {
  return isRetryableSendError(error) || error.code === Code.Aborted;
}

function fromParts(
  code: Code,
  message: string,
  find: <D extends DescMessage>(desc: D) => MessageShape<D> | undefined,
  cause?: unknown,
  fromTransport = false,
): ParleyClientError {
  const info = find(ErrorInfoSchema);
  const badRequest = find(BadRequestSchema);
  const delay = find(RetryInfoSchema)?.retryDelay;
  const violations = (badRequest?.fieldViolations ?? []).map((v) =>
    v.reason === ""
      ? { field: v.field, description: v.description }
      : { field: v.field, description: v.description, reason: v.reason },
  );
  return new ParleyClientError(code, info?.reason || codeName(code), message, {
    metadata: info?.metadata ?? {},
    violations,
    retryDelayMs: delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1_000_000,
    // Parley servers put an ErrorInfo on every error; without one, the failure is the network's.
    transportFailure: fromTransport && info === undefined && TRANSPORT_CODES.has(code),
    cause,
  });
}

/** `Code.ResourceExhausted` -> "RESOURCE_EXHAUSTED", the reason used when the server gave none. */
function codeName(code: Code): string {
  const name = Code[code] ?? "Unknown";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function unpackFirst<D extends DescMessage>(details: readonly Any[], desc: D): MessageShape<D> | undefined {
  for (const any of details) {
    try {
      const value = anyUnpack(any, desc);
      if (value !== undefined) {
        return value;
      }
    } catch {
      // An undecodable detail is advisory; skip it.
    }
  }
  return undefined;
}
