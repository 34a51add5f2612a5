import type { CallContext, ServerMiddleware, ServerMiddlewareCall } from "nice-grpc";
import { Status } from "nice-grpc";
import type { Logger } from "../logging.ts";
import { GrpcStatusError } from "./grpc-error.ts";
import { statusOf } from "./tracing.ts";

// Codes that mean the server failed, not that the caller asked for something it cannot have.
const SERVER_FAULTS = new Set([Status.UNKNOWN, Status.INTERNAL, Status.DATA_LOSS]);

/**
 * One structured line per RPC: method, code, reason, duration_ms (and trace_id/span_id from the
 * logger's mixin, so it must run inside the tracing middleware). Health checks and reflection are
 * logged at debug: probes every few seconds would otherwise drown the service's own traffic.
 */
export function createAccessLogMiddleware(logger: Logger): ServerMiddleware {
  return async function* accessLog<Req, Res>(call: ServerMiddlewareCall<Req, Res>, context: CallContext) {
    const started = performance.now();
    let code = Status.CANCELLED;
    let reason: string | undefined;
    try {
      const result = yield* call.next(call.request, context);
      code = Status.OK;
      return result;
    } catch (err) {
      code = statusOf(err);
      reason = err instanceof GrpcStatusError ? err.parleyError.reason : undefined;
      throw err;
    } finally {
      const line = {
        method: call.method.path,
        code: Status[code],
        ...(reason === undefined ? {} : { reason }),
        duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
      };
      if (call.method.path.startsWith("/grpc.")) {
        logger.debug(line, "rpc");
      } else if (SERVER_FAULTS.has(code)) {
        logger.error(line, "rpc");
      } else {
        logger.info(line, "rpc");
      }
    }
  };
}
