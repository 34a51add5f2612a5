import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import type { ContextValues, StreamResponse, Transport, UnaryResponse } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { TokenSource } from "./token-source.ts";

/**
 * How the SDK reaches the edge: a function from an edge base URL to a Transport (connect-web's
 * `createConnectTransport({ baseUrl })` in browsers, connect-node's in Node), so a Drain can move the
 * stream to another host. A plain Transport works too when the app talks to one fixed address.
 */
export type TransportFactory = (baseUrl: string) => Transport;

export type EdgeTransports = {
  /** The base URL the app configured (where Locate is asked, and where a failed moved-to host falls back to). */
  readonly baseUrl: string;
  /** The base URL calls go to now: the host the stream was moved to, or the configured one. */
  currentUrl(): string;
  setCurrentUrl(url: string): void;
  /** Goes back to the configured base URL (after a moved-to host failed). */
  resetUrl(): void;
  /** A Transport with the bearer token for one base URL. */
  forUrl(url: string): Transport;
  /** A Transport with the bearer token that follows `currentUrl()` call by call. */
  readonly current: Transport;
};

/**
 * Wraps the app's transport(s) so every call carries `Authorization: Bearer <token>`, and a unary
 * call refused with UNAUTHENTICATED [TOKEN_EXPIRED] is repeated once with a refreshed token.
 * (Streams are re-opened by the connection loop, which refreshes the token the same way.)
 */
export function createEdgeTransports(
  transport: Transport | TransportFactory,
  baseUrl: string | undefined,
  tokens: TokenSource,
): EdgeTransports {
  const initialUrl = baseUrl ?? "";
  if (typeof transport === "function" && baseUrl === undefined) {
    throw new TypeError("createParleyClient: a transport factory needs a baseUrl");
  }
  let url = initialUrl;
  const cache = new Map<string, Transport>();
  const forUrl = (target: string): Transport => {
    const key = typeof transport === "function" ? target : initialUrl;
    let wrapped = cache.get(key);
    if (wrapped === undefined) {
      wrapped = withBearerToken(typeof transport === "function" ? transport(key) : transport, tokens);
      cache.set(key, wrapped);
    }
    return wrapped;
  };
  return {
    baseUrl: initialUrl,
    currentUrl: () => url,
    setCurrentUrl(next) {
      url = next;
    },
    resetUrl() {
      url = initialUrl;
    },
    forUrl,
    current: {
      unary: (method, signal, timeoutMs, header, input, contextValues) =>
        forUrl(url).unary(method, signal, timeoutMs, header, input, contextValues),
      stream: (method, signal, timeoutMs, header, input, contextValues) =>
        forUrl(url).stream(method, signal, timeoutMs, header, input, contextValues),
    },
  };
}

/** Whether an error is the edge's UNAUTHENTICATED [TOKEN_EXPIRED]. */
export function isTokenExpired(error: unknown): boolean {
  return (
    error instanceof ConnectError &&
    error.code === Code.Unauthenticated &&
    error.findDetails(ErrorInfoSchema).some((info) => info.reason === "TOKEN_EXPIRED")
  );
}

type HeaderInit = ConstructorParameters<typeof Headers>[0];

function withBearerToken(inner: Transport, tokens: TokenSource): Transport {
  const headerWith = (header: HeaderInit | undefined, token: string) => {
    const headers = new Headers(header);
    headers.set("Authorization", `Bearer ${token}`);
    return headers;
  };
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const token = await tokens.get();
      try {
        return await inner.unary(method, signal, timeoutMs, headerWith(header, token), input, contextValues);
      } catch (error) {
        if (!isTokenExpired(error) || !tokens.refreshable) {
          throw error;
        }
        const fresh = await tokens.refresh(token);
        if (fresh === token) {
          throw error;
        }
        return inner.unary(method, signal, timeoutMs, headerWith(header, fresh), input, contextValues);
      }
    },
    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
      contextValues?: ContextValues,
    ): Promise<StreamResponse<I, O>> {
      const token = await tokens.get();
      return inner.stream(method, signal, timeoutMs, headerWith(header, token), input, contextValues);
    },
  };
}
