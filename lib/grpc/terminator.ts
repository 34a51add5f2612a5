import type { CallContext, ServerMiddleware, ServerMiddlewareCall } from "nice-grpc";

/** Added to the call context: a long-lived call opts in to being ended when the server stops. */
export type TerminatorContext = {
  /** Abort this call's `signal` as soon as the server begins shutting down. */
  abortOnTerminate(): void;
};

export type Terminator = {
  readonly middleware: ServerMiddleware<TerminatorContext>;
  /** Aborts every call that opted in, now and from now on. */
  terminate(): void;
};

/**
 * Graceful shutdown waits for running calls, and streams that only end when the client leaves
 * (health Watch, delivery streams) would hold it until the timeout. Calls that call
 * `abortOnTerminate()` are aborted at the start of shutdown instead, which the handler sees on
 * `context.signal` like a client cancel. nice-grpc-server-health's Watch already opts in.
 */
export function createTerminator(): Terminator {
  const optedIn = new Set<AbortController>();
  let terminated = false;
  const middleware: ServerMiddleware<TerminatorContext> = async function* terminator<Req, Res>(
    call: ServerMiddlewareCall<Req, Res, TerminatorContext>,
    context: CallContext,
  ) {
    const controller = new AbortController();
    const forward = () => controller.abort();
    if (context.signal.aborted) {
      controller.abort();
    }
    context.signal.addEventListener("abort", forward);
    try {
      return yield* call.next(call.request, {
        ...context,
        signal: controller.signal,
        abortOnTerminate() {
          if (terminated) {
            controller.abort();
          } else {
            optedIn.add(controller);
          }
        },
      });
    } finally {
      context.signal.removeEventListener("abort", forward);
      optedIn.delete(controller);
    }
  };
  return {
    middleware,
    terminate() {
      terminated = true;
      for (const controller of optedIn) {
        controller.abort();
      }
      optedIn.clear();
    },
  };
}
