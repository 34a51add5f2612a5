import type { HandlerContext, Interceptor } from "@connectrpc/connect";
import { createContextKey } from "@connectrpc/connect";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import { internal } from "../../lib/errors.ts";
import type { AuthenticatedCaller, TokenVerifier } from "./verifier.ts";

/** Where the auth interceptor leaves the verified caller for handlers (`ctx.values`). */
export const authenticatedCallerKey = createContextKey<AuthenticatedCaller | undefined>(undefined, {
  description: "parley.edge.authenticatedCaller",
});

/**
 * Authenticates every call before anything else looks at it (validation included, so a caller
 * without a token learns nothing about the schema): the `Authorization: Bearer <JWT>` header must
 * carry a valid device-bound token, else the call fails with UNAUTHENTICATED. Streams are
 * authenticated once, when they open.
 */
export function createAuthInterceptor(verifier: TokenVerifier): Interceptor {
  return (next) => async (req) => {
    const caller = await verifier.authenticate(req.header.get("authorization"));
    req.contextValues.set(authenticatedCallerKey, caller);
    return next(req);
  };
}

/** The verified caller of a call; every edge route runs behind the auth interceptor. */
export function authenticatedCaller(ctx: Pick<HandlerContext, "values">): AuthenticatedCaller {
  const caller = ctx.values.get(authenticatedCallerKey);
  if (caller === undefined) {
    // A route served without the interceptor: a wiring bug, never the client's fault.
    throw internal("INTERNAL", "internal error", {
      cause: new Error("edge route ran without authentication"),
    });
  }
  return caller;
}

/** The calling device (user and device id from the token). */
export function callingDevice(ctx: Pick<HandlerContext, "values">): DeviceAddress {
  return authenticatedCaller(ctx).device;
}
