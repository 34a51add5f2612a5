/** A device-bound JWT, or a function that fetches a fresh one (called again when the edge says it expired). */
export type TokenProvider = string | (() => Promise<string>);

export type TokenSource = {
  /** The current token, fetching one first if none is held. Concurrent callers share one fetch. */
  get(): Promise<string>;
  /**
   * Drops `stale` and fetches a new token (concurrent callers share one fetch). Resolves to the
   * token now held; when it equals `stale` the provider could not produce a new one (a fixed string).
   */
  refresh(stale: string): Promise<string>;
  /** Whether `refresh` can ever yield a different token. */
  readonly refreshable: boolean;
};

export function createTokenSource(provider: TokenProvider): TokenSource {
  if (typeof provider === "string") {
    const token = provider;
    return { get: async () => token, refresh: async () => token, refreshable: false };
  }
  let current: Promise<string> | undefined;
  const fetchToken = () => {
    const pending = provider();
    current = pending;
    // A failed fetch is not kept: the next caller tries again.
    pending.catch(() => {
      if (current === pending) {
        current = undefined;
      }
    });
    return pending;
  };
  return {
    get: () => current ?? fetchToken(),
    async refresh(stale) {
      const before = current;
      const held = before === undefined ? undefined : await before.catch(() => undefined);
      if (current !== before && current !== undefined) {
        return current; // another caller refreshed meanwhile: share its fetch
      }
      if (held !== undefined && held !== stale) {
        return held;
      }
      return fetchToken();
    },
    refreshable: true,
  };
}
