// The key service alone in its own process: `node services/key/main.ts`. PARLEY_PROFILE=cluster
// runs it on Cassandra (keys) and Pulsar (events); the default, embedded, on the SQLite file and the
// embedded broker's file in PARLEY_DATA_DIR.
import { join } from "node:path";
import type { Broker } from "../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../lib/broker/embedded-broker.ts";
import { loadProfile, openClusterBroker, openClusterCassandra } from "../../lib/cluster-engines.ts";
import { loadConfig, stringVar } from "../../lib/config.ts";
import { grpcServiceConfigSpec, runProcess, startGrpcService } from "../../lib/service-process.ts";
import { createCassandraKeyStore } from "./adapters/cassandra/cassandra-key-store.ts";
import type { KeyServiceOptions } from "./service.ts";
import { createKeyService, KEY_DEFAULT_PORT } from "./service.ts";

await runProcess("key", async (logger) => {
  const config = loadConfig({
    ...grpcServiceConfigSpec("KEY", KEY_DEFAULT_PORT),
    dataDir: stringVar("PARLEY_DATA_DIR", { default: ".data" }),
  });
  const profile = loadProfile();
  let broker: Broker;
  let store: KeyServiceOptions["store"];
  let closeEngines = async () => {};
  if (profile.profile === "cluster") {
    const cassandra = await openClusterCassandra(profile.engines, logger);
    broker = await openClusterBroker(profile.engines, logger);
    store = await createCassandraKeyStore({ client: cassandra, logger });
    closeEngines = () => cassandra.shutdown();
  } else {
    broker = await createEmbeddedBroker({ path: join(config.dataDir, "broker.db") });
    store = { path: join(config.dataDir, "parley.db") };
  }
  const key = await createKeyService({ store, broker, logger });
  const server = await startGrpcService({
    name: "key",
    host: config.host,
    port: config.port,
    services: key.registrations,
    logger,
  });
  // Stopped in reverse: the server first (drains calls), then the relay and store, then the engines.
  return [
    {
      name: "key-parts",
      address: "",
      stop: async () => {
        await key.stop();
        await broker.close();
        await closeEngines();
      },
    },
    server,
  ];
});
