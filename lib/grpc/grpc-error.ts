import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Metadata } from "nice-grpc";
import { ClientError, ServerError } from "nice-grpc";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import type { ParleyError } from "../errors.ts";
import { ErrorCode, parleyErrorFromStatus, toParleyError, toStatus } from "../errors.ts";

/** The trailer gRPC uses for a binary `google.rpc.Status` (the "richer error model"). */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/**
 * A ServerError that also carries the encoded `google.rpc.Status`. nice-grpc's ServerError has no
 * room for trailers, so the server middleware copies `statusDetails` into the call's trailer.
 */
export class GrpcStatusError extends ServerError {
  readonly statusDetails: Uint8Array;
  readonly parleyError: ParleyError;

  constructor(err: ParleyError) {
    super(ErrorCode[err.code], err.message);
    this.statusDetails = toBinary(StatusSchema, toStatus(err));
    this.parleyError = err;
  }
}

/**
 * The one gRPC mapping: a ParleyError keeps its code, message and details; anything else becomes
 * INTERNAL with a generic message (the caller logs the cause). A ServerError thrown on purpose
 * passes through with its own code.
 */
export function toGrpcError(err: unknown): ServerError {
  if (err instanceof ServerError) {
    return err;
  }
  return new GrpcStatusError(toParleyError(err));
}

/**
 * A ClientError with the trailer it arrived with. The client middleware throws it in place of
 * nice-grpc's ClientError (which drops trailers), so `fromGrpcError` can read the status details;
 * it still is a ClientError, so retry and deadline middleware treat it as usual.
 */
export class ClientErrorWithTrailer extends ClientError {
  readonly trailer: Metadata | undefined;

  constructor(err: ClientError, trailer: Metadata | undefined) {
    super(err.path, err.code, err.details);
    this.trailer = trailer;
    this.stack = err.stack;
  }
}

/**
 * Reads the error a gRPC call failed with back into a ParleyError: reason, metadata and field
 * violations come from the `grpc-status-details-bin` trailer when the peer sent one. Accepts the
 * errors of clients made by `createGrpcClient`, plain nice-grpc ClientErrors (code and message
 * only) and raw @grpc/grpc-js errors (which keep their trailer in `metadata`).
 */
export function fromGrpcError(err: unknown): ParleyError {
  if (err instanceof ClientError) {
    const trailer = err instanceof ClientErrorWithTrailer ? err.trailer : undefined;
    return fromParts(err.code, err.details, trailer?.get(STATUS_DETAILS_KEY), err);
  }
  if (isGrpcJsStatus(err)) {
    const raw = err.metadata.get(STATUS_DETAILS_KEY)[0];
    return fromParts(err.code, err.details, raw instanceof Uint8Array ? raw : undefined, err);
  }
  return toParleyError(err);
}

function fromParts(code: number, message: string, statusBytes: Uint8Array | undefined, cause: unknown) {
  if (statusBytes !== undefined) {
    try {
      const status = fromBinary(StatusSchema, statusBytes);
      return parleyErrorFromStatus(code, message, status.details, cause);
    } catch {
      // A garbled trailer is no reason to lose the code and message.
    }
  }
  return parleyErrorFromStatus(code, message, [], cause);
}

type GrpcJsStatus = {
  code: number;
  details: string;
  metadata: { get(key: string): Array<string | Uint8Array> };
};

function isGrpcJsStatus(err: unknown): err is GrpcJsStatus {
  if (typeof err !== "object" || err === null) {
    return false;
  }
  const candidate = err as Partial<Record<keyof GrpcJsStatus, unknown>>;
  return (
    typeof candidate.code === "number" &&
    typeof candidate.details === "string" &&
    typeof candidate.metadata === "object" &&
    candidate.metadata !== null &&
    typeof (candidate.metadata as { get?: unknown }).get === "function"
  );
}
