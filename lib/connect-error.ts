import type { Code } from "@connectrpc/connect";
import { ConnectError } from "@connectrpc/connect";
import { ErrorCode, errorDetails, toParleyError } from "./errors.ts";

/**
 * The Connect side of the one error mapping: the same code, message and ErrorInfo/BadRequest/
 * RetryInfo details as `toGrpcError`, so a client sees one error model whichever stack answered.
 * Anything that is not a ParleyError becomes `internal` with a generic message; the original is
 * kept as `cause` (Connect never sends it) for the edge to log.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) {
    return err;
  }
  const parley = toParleyError(err);
  // Connect's Code and gRPC's status share their numbers, which ErrorCode holds.
  const code = ErrorCode[parley.code] as number as Code;
  return new ConnectError(
    parley.message,
    code,
    undefined,
    errorDetails(parley).map((d) => ({ desc: d.desc, value: d.value })),
    parley.cause ?? parley,
  );
}
