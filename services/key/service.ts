import type { DatabaseSync } from "node:sqlite";
import { KeyService } from "../../gen/parley/key/v1/key_service_pb.ts";
import type { Broker } from "../../lib/broker/broker.ts";
import type { GrpcServiceRegistration } from "../../lib/grpc/server.ts";
import { grpcService } from "../../lib/grpc/server.ts";
import type { Logger } from "../../lib/logging.ts";
import { countRejections } from "../../lib/metrics.ts";
import { startOutboxRelay } from "../../lib/outbox.ts";
import type { RateLimiter, RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import { ConversationView } from "../../lib/views/conversation-view.ts";
import { feedConversationView } from "../../lib/views/conversation-view-feed.ts";
import { createConversationRelationships } from "./adapters/memory/conversation-relationships.ts";
import { createSqliteKeyStore } from "./adapters/sqlite/sqlite-key-store.ts";
import type { KeyStore } from "./domain/key-store.ts";
import type { KeyDomain, KeyDomainDeps } from "./domain/keys.ts";
import { createKeyDomain } from "./domain/keys.ts";
import type { KeySettings } from "./domain/model.ts";
import type { RelationshipView } from "./domain/relationship-view.ts";
import { createKeyHandlers } from "./handlers.ts";

/** Default gRPC port of the key service in the cluster profile (PARLEY_KEY_PORT). */
export const KEY_DEFAULT_PORT = 7102;

const HOUR_S = 3_600;

/** Prekey bundles one caller may claim (one token per bundle): each budget refills over an hour. */
export const DEFAULT_CLAIM_RATES: { readonly perTarget: RateRule; readonly perCaller: RateRule } = {
  // From one target user: ten full fetches of their (at most 5) devices per hour.
  perTarget: { burst: 50, perSecond: 50 / HOUR_S },
  // Over all targets: starting sessions with every device of a full group (1,000 members x 5
  // devices) must fit.
  perCaller: { burst: 6_000, perSecond: 6_000 / HOUR_S },
};

/** The gRPC services of the key service over a domain wired to the given adapters. */
export function keyServices(deps: KeyDomainDeps | KeyDomain): GrpcServiceRegistration[] {
  const keys = "registerDevice" in deps ? deps : createKeyDomain(deps);
  return [grpcService(KeyService, createKeyHandlers(keys))];
}

export interface KeyServiceOptions {
  /**
   * Where the keys live: a ready KeyStore (e.g. createCassandraKeyStore in the cluster profile; the
   * caller closes it), an open SQLite database, or the path of the SQLite file.
   */
  readonly store: KeyStore | { readonly db: DatabaseSync } | { readonly path: string };
  /** Where KeyChanged and PrekeysLow events go (through the outbox), and where the view of who may see whose keys comes from. */
  readonly broker: Broker;
  readonly logger: Logger;
  /**
   * Who may see whose keys. Default: a view of connection's `chat.memberships` and `chat.blocks`
   * followed on `broker`.
   */
  readonly relationships?: RelationshipView;
  readonly settings?: Partial<KeySettings>;
  /** Prekey claim budgets; each defaults to its DEFAULT_CLAIM_RATES entry. */
  readonly claimRates?: { readonly perTarget?: RateRule; readonly perCaller?: RateRule };
  /**
   * The prekey claim limiters (the cluster's Redis ones, shared by every replica, each under its
   * own key prefix; the caller's to close). Each one not given is made in memory with its
   * `claimRates` rule and closed by stop().
   */
  readonly claimLimiters?: { readonly perTarget?: RateLimiter; readonly perCaller?: RateLimiter };
  /** The clock (tests). */
  readonly now?: () => Date;
}

export interface KeyServiceParts {
  readonly registrations: GrpcServiceRegistration[];
  /** The use cases, for in-process callers and tests (the edge asks `deviceStatus` through GetDeviceStatus). */
  readonly keys: KeyDomain;
  readonly store: KeyStore;
  /** Stops following the broker, publishes what the outbox holds, closes the store and the limiters (those it made). */
  stop(): Promise<void>;
}

function isKeyStore(store: KeyServiceOptions["store"]): store is KeyStore {
  return "claimPrekeyBundles" in store;
}

/**
 * The key service with its embedded adapters: the SQLite store (and its outbox, relayed to the
 * broker), prekey claim rate limiters (in memory unless passed in) and the membership view fed from
 * the broker. Both the embedded mesh and services/key/main.ts start it this way.
 */
export async function createKeyService(options: KeyServiceOptions): Promise<KeyServiceParts> {
  const ownsStore = !isKeyStore(options.store);
  const store = isKeyStore(options.store) ? options.store : createSqliteKeyStore(options.store);
  const logger = options.logger.child({ component: "key" });
  const clock = options.now;
  const limiterOptions = clock === undefined ? {} : { now: () => clock().getTime() };
  // What the caller passes in is the caller's to close; what is made here is closed by stop().
  const ownLimiters: Array<{ close(): void }> = [];
  const limiter = (given: RateLimiter | undefined, rule: RateRule): RateLimiter => {
    if (given !== undefined) return given;
    const own = createMemoryRateLimiter(rule, limiterOptions);
    ownLimiters.push(own);
    return own;
  };
  const claimLimiters = {
    perTarget: limiter(
      options.claimLimiters?.perTarget,
      options.claimRates?.perTarget ?? DEFAULT_CLAIM_RATES.perTarget,
    ),
    perCaller: limiter(
      options.claimLimiters?.perCaller,
      options.claimRates?.perCaller ?? DEFAULT_CLAIM_RATES.perCaller,
    ),
  };
  const closeLimiters = () => {
    for (const own of ownLimiters.splice(0)) own.close();
  };
  let following: { close(): Promise<void> } | undefined;
  try {
    let relationships = options.relationships;
    if (relationships === undefined) {
      const view = new ConversationView();
      const feeds = await feedConversationView(options.broker, view, logger);
      following = { close: async () => Promise.all(feeds.map((f) => f.close())).then(() => {}) };
      relationships = createConversationRelationships(view);
    }
    const relay = startOutboxRelay(store.outbox, options.broker, { logger });
    const keys = createKeyDomain({
      store,
      relationships,
      claimLimiters: {
        perTarget: countRejections(claimLimiters.perTarget, "prekey_claim_per_target"),
        perCaller: countRejections(claimLimiters.perCaller, "prekey_claim_per_caller"),
      },
      onChange: () => relay.notify(),
      ...(options.settings === undefined ? {} : { settings: options.settings }),
      ...(options.now === undefined ? {} : { now: options.now }),
    });
    return {
      registrations: keyServices(keys),
      keys,
      store,
      async stop() {
        await following?.close();
        await relay.stop();
        if (ownsStore) store.close();
        closeLimiters();
      },
    };
  } catch (err) {
    await following?.close();
    if (ownsStore) store.close();
    closeLimiters();
    throw err;
  }
}
