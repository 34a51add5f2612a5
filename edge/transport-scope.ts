import { AsyncLocalStorage } from "node:async_hooks";
import http2 from "node:http2";
import type { NodeHandlerFn } from "./http-server.ts";

/** The Node request and response of a call (HTTP/1.1 or HTTP/2), as connect-node types them. */
export type NodeRequest = Parameters<NodeHandlerFn>[0];
export type NodeResponse = Parameters<NodeHandlerFn>[1];

interface Transport {
  readonly abort: () => void;
  readonly response: NodeResponse;
}

const scope = new AsyncLocalStorage<Transport>();

/** How long a finished response's stream may stay half-open before it is reset. */
const HALF_OPEN_GRACE_MS = 500;

/**
 * Runs each request of `handler` with what Connect's handler context does not offer: a way to cut
 * its HTTP stream (a device stream whose client stopped reading can never finish its last writes,
 * so after a grace period the edge resets it: HTTP/2 RST_STREAM CANCEL; HTTP/1.1: the socket), and
 * the Node response itself, which a device stream writes its frames to directly (frame-writer.ts)
 * also when Connect serves its call.
 */
export function withTransportAbort(handler: NodeHandlerFn): NodeHandlerFn {
  return (req, res) => {
    if (res instanceof http2.Http2ServerResponse) {
      // A bidi stream whose response is complete but whose client keeps its side open (it got a
      // Close and has not noticed) would hold its connection, and a graceful shutdown, until the
      // client acts. Once the response ended and had ample time to go out, such a stream is reset
      // with NO_ERROR, as gRPC over HTTP/2 allows (resetting at once could overtake the trailers).
      const stream = res.stream;
      stream.once("finish", () => {
        if (stream.closed) return;
        const timer = setTimeout(() => {
          if (!stream.closed && !stream.destroyed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
        }, HALF_OPEN_GRACE_MS);
        timer.unref();
        stream.once("close", () => clearTimeout(timer));
      });
    }
    const abort = () => {
      if (res instanceof http2.Http2ServerResponse) {
        if (!res.stream.destroyed) res.stream.close(http2.constants.NGHTTP2_CANCEL);
      } else if (!res.destroyed) {
        res.destroy();
      }
    };
    scope.run({ abort, response: res }, () => handler(req, res));
  };
}

/** The abort of the request being handled, when it runs under `withTransportAbort`. */
export function currentTransportAbort(): (() => void) | undefined {
  return scope.getStore()?.abort;
}

/** The Node response of the request being handled, when it runs under `withTransportAbort`. */
export function currentResponse(): NodeResponse | undefined {
  return scope.getStore()?.response;
}
