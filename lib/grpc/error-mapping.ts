import type { CallContext, ServerMiddleware, ServerMiddlewareCall } from "nice-grpc";
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
        if (isUnexpectedError(mapped.parleyError)) {
          logger.error(
            { err: mapped.parleyError.cause ?? mapped.parleyError, method: call.method.path },
            "unexpected error in handler",
          );
        }
        context.trailer.set(STATUS_DETAILS_KEY, mapped.statusDetails);
      }
      throw mapped;
    }
  };
}
