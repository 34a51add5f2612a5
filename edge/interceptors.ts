import type { Interceptor } from "@connectrpc/connect";
import { toConnectError } from "../lib/connect-error.ts";
import { isParleyError, isUnexpectedError } from "../lib/errors.ts";
import { validateMessage } from "../lib/grpc/validation.ts";
import type { Logger } from "../lib/logging.ts";

/**
 * Validates every unary and server-streaming request against its protovalidate rules before the
 * handler runs. Client-streamed frames (Session) are validated one by one by the handler instead:
 * a bad frame is answered with a FrameError and must not end the device's stream.
 */
export const validationInterceptor: Interceptor = (next) => async (req) => {
  if (!req.stream) validateMessage(req.method.input, req.message);
  return next(req);
};

/**
 * The edge's single error boundary: whatever a handler throws reaches the client as a ConnectError
 * with the shared code + ErrorInfo mapping; unexpected errors are logged here and sent as
 * `internal` without their cause. Also one log line per call.
 */
export function createErrorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const fail = (err: unknown): never => {
      if (isUnexpectedError(err)) logger.error({ rpc, err }, "unexpected error in edge handler");
      const connectError = toConnectError(err);
      const reason = isParleyError(err) ? err.reason : undefined;
      logger.info({ rpc, code: connectError.code, reason, duration_ms: elapsed(started) }, "rpc failed");
      throw connectError;
    };
    try {
      const res = await next(req);
      if (!res.stream) {
        logger.info({ rpc, duration_ms: elapsed(started) }, "rpc ok");
        return res;
      }
      const source = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* source;
            logger.info({ rpc, duration_ms: elapsed(started) }, "stream ended");
          } catch (err) {
            fail(err);
          }
        })(),
      };
    } catch (err) {
      return fail(err);
    }
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 10) / 10;
}
