import type { CallContext, ServerMiddleware, ServerMiddlewareCall } from "nice-grpc";
import type { ParleyError } from "../errors.ts";
import { isUnexpectedError } from "../errors.ts";
import type { Logger } from "../logging.ts";
import { GrpcStatusError, STATUS_DETAILS_KEY, toGrpcError } from "./grpc-error.ts";

/**
 * The RPC boundary of every gRPC server: whatever a handler throws leaves as a gRPC status with
 * `google.rpc.Status` details in the `grpc-status-details-bin` trailer. Unexpected errors are
 * logged here with their cause, which never reaches the caller.
 */
export function createErrorMappingMiddleware(logger: Logger): ServerMiddleware {
  return async function* errorMapping<Req, Res>(call: ServerMiddlewareCall<Req, Res>, context: CallContext) {
    try {
      return yield* call.next(call.request, context);
    } catch (err) {
      if (err instanceof Error && err.name === "AbortError") {
        // The caller went away; nice-grpc answers CANCELLED and there is no one to tell more.
        throw err;
      }
      const mapped = toGrpcError(err);
      if (mapped instanceof GrpcStatusError) {
        logIfUnexpected(mapped.parleyError, logger, call.method.path);
        context.trailer.set(STATUS_DETAILS_KEY, mapped.statusDetails);
      }
      throw mapped;
    }
  };
}

/**
 * Logs, with its cause, an error a handler of `method` answers with when it is a bug or an outage
 * rather than an expected answer; the cause never reaches the caller. For errors answered inside a
 * response (a batch's per-item outcomes) as well as for those the middleware maps.
 */
export function logIfUnexpected(err: ParleyError, logger: Logger, method: string): void {
  if (isUnexpectedError(err)) logger.error({ err: err.cause ?? err, method }, "unexpected error in handler");
}
