// The history service alone in its own process: `node services/history/main.ts`.
// PARLEY_PROFILE=cluster runs it on Cassandra (history, inboxes, receipts; rows expire by TTL) and
// Pulsar, with the RequestResend rate limit in Redis (shared by every history process); the
// default, embedded, on its own SQLite file (history.db: see prepareHistoryFile) and the embedded
// broker's file in PARLEY_DATA_DIR, with a retention sweep and the rate limit in memory.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { Topics } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import {
  closeRedisClient,
  loadProfile,
  openClusterBroker,
  openClusterCassandra,
  openClusterRedis,
} from "../../lib/cluster-engines.ts";
import { boolVar, durationVar, loadConfig, optional, stringVar } from "../../lib/config.ts";
import { brokerWith, killSelf, takeKillFile } from "../../lib/fault-hooks.ts";
import type { Logger } from "../../lib/logging.ts";
import { createRedisRateLimiter } from "../../lib/redis/redis-rate-limiter.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createCassandraHistoryStore } from "./adapters/cassandra/cassandra-history-store.ts";
import { prepareHistoryFile } from "./adapters/sqlite/history-file.ts";
import { DEFAULT_RETENTION_MS } from "./domain/history.ts";
import { createHistoryService, DEFAULT_RESEND_RATE, HISTORY_DEFAULT_PORT } from "./service.ts";

await runProcess("history", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("HISTORY", HISTORY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
    retentionMs: durationVar("PARLEY_HISTORY_RETENTION", { default: DEFAULT_RETENTION_MS }),
    connectionAddress: stringVar("PARLEY_CONNECTION_ADDRESS", { default: "127.0.0.1:7101" }),
    ...faultSwitchesSpec(),
  });
  const profile = loadProfile();
  let broker: Broker;
  let history: Awaited<ReturnType<typeof createHistoryService>>;
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const redis = openClusterRedis(profile.engines, logger, "parley-history");
    const prefix = profile.engines.names.redisPrefix;
    const cassandra = await openClusterCassandra(profile.engines, logger);
    broker = withFaultSwitches(config, await openClusterBroker(profile.engines, logger), logger);
    const store = await createCassandraHistoryStore({ client: cassandra, logger });
    history = await createHistoryService({
      store,
      broker,
      logger,
      retentionMs: config.retentionMs,
      connectionAddress: config.connectionAddress,
      resendLimiter: createRedisRateLimiter(redis, DEFAULT_RESEND_RATE, {
        keyPrefix: `${prefix}history:rate:resend:`,
      }),
    });
    closeEngines = async () => {
      await cassandra.shutdown();
      await closeRedisClient(redis);
    };
  } else {
    broker = withFaultSwitches(
      config,
      await createEmbeddedBroker({ path: join(config.dataDir, "broker.db"), logger }),
      logger,
    );
    history = await createHistoryService({
      dbPath: prepareHistoryFile(config.dataDir),
      broker,
      logger,
      retentionMs: config.retentionMs,
      connectionAddress: config.connectionAddress,
    });
  }
  const server = await startGrpcService({
    name: "history",
    host: config.host,
    port: config.port,
    services: history.registrations,
    logger,
  });
  return [
    {
      name: "history-parts",
      address: "",
      stop: async () => {
        await history.stop();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});

// FAULT TESTS ONLY (test/fault). Unset, they change nothing; each one set is logged at start-up.
// (Functions, not consts: used while the top-level await above runs.)
function faultSwitchesSpec() {
  return {
    // Armed by creating this file: the next MessageAccepted stored (seq taken, inbox rows and
    // outbox written) removes it and SIGKILLs the process before the broker is acknowledged.
    killFile: optional(stringVar("PARLEY_HISTORY_FAULT_KILL_FILE")),
    // A control run's bug: MessageAccepted is acknowledged on arrival and stored afterwards; with
    // the kill file armed, the next one is acknowledged and the process dies before storing it.
    ackBeforeStore: boolVar("PARLEY_HISTORY_FAULT_ACK_BEFORE_STORE", { default: false }),
  };
}

function withFaultSwitches(
  config: { readonly killFile: string | undefined; readonly ackBeforeStore: boolean },
  broker: Broker,
  logger: Logger,
): Broker {
  const { killFile, ackBeforeStore } = config;
  if (killFile === undefined && !ackBeforeStore) return broker;
  logger.warn({ killFile, ackBeforeStore }, "FAULT TEST HOOK: history's consumer is instrumented");
  const armed = () => killFile !== undefined && takeKillFile(killFile);
  const die = (why: string) => killSelf(logger, why);
  return brokerWith(broker, {
    subscribe(topic, options, handler) {
      if (topic !== Topics.messages) return broker.subscribe(topic, options, handler);
      return broker.subscribe(topic, options, async (message) => {
        if (ackBeforeStore) {
          // Acknowledged by returning; stored afterwards, or (once armed) never: the process dies
          // once the acknowledgement has had time to reach the broker.
          if (armed()) setTimeout(() => die("after acknowledging a message it never stored"), 1_000);
          else void handler(message).catch((err: unknown) => logger.error({ err }, "lost a message"));
          return;
        }
        await handler(message);
        if (armed()) die("after storing a message, before acknowledging it");
      });
    },
  });
}
