// What each engine needs: its ports, its configuration files, its command line and its readiness
// probe. Every server listens on 127.0.0.1 only and keeps its data under the state folder.
import { mkdirSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import { tcpOpen } from "./process-control.ts";

export type EngineName = "redis" | "etcd" | "cassandra" | "pulsar";
export const ENGINE_NAMES: readonly EngineName[] = ["redis", "etcd", "cassandra", "pulsar"];

/** Versions resolved by tools/engines/maven/<engine>/pom.xml. */
export const CASSANDRA_VERSION = "5.0.9";
export const PULSAR_VERSION = "4.0.7";

/**
 * The broker settings Parley's Pulsar adapter relies on, beyond Pulsar's defaults: the engine
 * tests' standalone and deploy/k8s/pulsar.yaml (as PULSAR_PREFIX_ variables) both set them, and
 * test/deploy.test.ts checks that the manifest keeps every one.
 */
export const PULSAR_SETTINGS_PARLEY_RELIES_ON: Readonly<Record<string, string>> = {
  // The adapter speaks the WebSocket API (lib/broker/pulsar).
  webSocketServiceEnabled: "true",
  // Parley's messages reach Pulsar as WebSocket text frames, the payload in base64 (4/3 of its
  // size) inside JSON. The default frame limit, 1 MiB, refused any message over ~750 KB; this one
  // takes a message as large as Pulsar's own limit (maxMessageSize, 5 MiB) and its properties.
  // lib/message-limits.ts says what the largest send makes.
  webSocketMaxTextFrameSize: "8388608",
  // Topics come into being when first used; partitioned ones would need the adapter to know.
  allowAutoTopicCreation: "true",
  allowAutoTopicCreationType: "non-partitioned",
  // Topics of a quiet chat must not vanish with their subscriptions' positions.
  brokerDeleteInactiveTopicsEnabled: "false",
};

export interface EnginePorts {
  readonly redis: number;
  readonly etcdClient: number;
  readonly etcdPeer: number;
  readonly cassandraNative: number;
  readonly cassandraStorage: number;
  readonly cassandraJmx: number;
  readonly pulsarBroker: number;
  readonly pulsarWeb: number;
  readonly pulsarBookie: number;
}

/**
 * Off the engines' usual ports, so a developer's own Redis or Cassandra is left alone;
 * PARLEY_ENGINES_PORT_OFFSET moves them all (a second set of engines beside the first).
 */
export function enginePorts(offset: number): EnginePorts {
  return {
    redis: 16379 + offset,
    etcdClient: 12379 + offset,
    etcdPeer: 12380 + offset,
    cassandraNative: 19042 + offset,
    cassandraStorage: 17000 + offset,
    cassandraJmx: 17199 + offset,
    pulsarBroker: 16650 + offset,
    pulsarWeb: 18080 + offset,
    pulsarBookie: 13181 + offset,
  };
}

export interface EngineSpec {
  readonly name: EngineName;
  /** Ports it must be able to bind (checked before starting). */
  readonly ports: readonly number[];
  /** Writes configuration under `dir` and returns the command to run there. */
  prepare(dir: string): { readonly command: string; readonly args: readonly string[] };
  ready(): Promise<boolean>;
  /** Where clients reach it, for `status` and the env file. */
  readonly endpoint: string;
  /** How long a clean shutdown may take before SIGKILL. */
  readonly stopGraceMs: number;
  readonly startTimeoutMs: number;
}

export function engineSpecs(ports: EnginePorts, libDir: (engine: "cassandra" | "pulsar") => string) {
  const specs: Record<EngineName, EngineSpec> = {
    redis: {
      name: "redis",
      ports: [ports.redis],
      endpoint: `redis://127.0.0.1:${ports.redis}`,
      stopGraceMs: 10_000,
      startTimeoutMs: 15_000,
      prepare(dir) {
        mkdirSync(join(dir, "data"), { recursive: true });
        // Append-only file fsynced every second: a restart keeps checkpoints and idempotency keys.
        writeFileSync(
          join(dir, "redis.conf"),
          [
            "bind 127.0.0.1",
            `port ${ports.redis}`,
            "protected-mode yes",
            `dir ${join(dir, "data")}`,
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            "maxmemory-policy noeviction",
            "",
          ].join("\n"),
        );
        return { command: "redis-server", args: [join(dir, "redis.conf")] };
      },
      ready: () => redisPing(ports.redis),
    },
    etcd: {
      name: "etcd",
      ports: [ports.etcdClient, ports.etcdPeer],
      endpoint: `http://127.0.0.1:${ports.etcdClient}`,
      stopGraceMs: 10_000,
      startTimeoutMs: 30_000,
      prepare(dir) {
        const client = `http://127.0.0.1:${ports.etcdClient}`;
        const peer = `http://127.0.0.1:${ports.etcdPeer}`;
        return {
          command: "etcd",
          args: [
            "--name=parley",
            `--data-dir=${join(dir, "data")}`,
            `--listen-client-urls=${client}`,
            `--advertise-client-urls=${client}`,
            `--listen-peer-urls=${peer}`,
            `--initial-advertise-peer-urls=${peer}`,
            `--initial-cluster=parley=${peer}`,
            "--listen-metrics-urls=",
          ],
        };
      },
      ready: async () => {
        const response = await fetch(`http://127.0.0.1:${ports.etcdClient}/health`, {
          signal: AbortSignal.timeout(2_000),
        });
        return response.ok && ((await response.json()) as { health?: string }).health === "true";
      },
    },
    cassandra: {
      name: "cassandra",
      ports: [ports.cassandraNative, ports.cassandraStorage, ports.cassandraJmx],
      endpoint: `127.0.0.1:${ports.cassandraNative}`,
      stopGraceMs: 60_000,
      startTimeoutMs: 180_000,
      prepare(dir) {
        writeCassandraConfig(dir, ports);
        const lib = libDir("cassandra");
        return {
          command: "java",
          args: [
            "-Xms1G",
            "-Xmx1G",
            // A node that ran out of heap stops rather than serving on in an unknown state.
            "-XX:+ExitOnOutOfMemoryError",
            ...CASSANDRA_JDK17_OPTIONS,
            `-javaagent:${join(lib, "jamm-0.4.0.jar")}`,
            `-Dcassandra.config=file://${join(dir, "conf", "cassandra.yaml")}`,
            `-Dlogback.configurationFile=file://${join(dir, "conf", "logback.xml")}`,
            `-Dcassandra.storagedir=${join(dir, "data")}`,
            `-Dcassandra.logdir=${dir}`,
            "-Dcassandra-foreground=yes",
            `-Dcassandra.jmx.local.port=${ports.cassandraJmx}`,
            "-Djava.rmi.server.hostname=127.0.0.1",
            // A single node has nobody to gossip with: do not wait for the ring to settle.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp",
            `${lib}/*`,
            "org.apache.cassandra.service.CassandraDaemon",
          ],
        };
      },
      ready: () => tcpOpen(ports.cassandraNative),
    },
    pulsar: {
      name: "pulsar",
      ports: [ports.pulsarBroker, ports.pulsarWeb, ports.pulsarBookie],
      endpoint: `http://127.0.0.1:${ports.pulsarWeb}`,
      stopGraceMs: 60_000,
      startTimeoutMs: 180_000,
      prepare(dir) {
        writePulsarConfig(dir, ports);
        const lib = libDir("pulsar");
        return {
          command: "java",
          args: [
            "-Xms512m",
            "-Xmx1g",
            "-XX:MaxDirectMemorySize=1g",
            "-XX:+UseG1GC",
            `-Dlog4j.configurationFile=file://${join(dir, "conf", "log4j2.xml")}`,
            "-Dpulsar.allocator.exit_on_oom=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            ...PULSAR_JDK17_OPTIONS,
            "-cp",
            `${lib}/*`,
            "org.apache.pulsar.PulsarStandaloneStarter",
            "--config",
            join(dir, "conf", "standalone.conf"),
            "--no-functions-worker",
            "--no-stream-storage",
            "--bookkeeper-dir",
            join(dir, "data", "bookkeeper"),
            "--metadata-dir",
            join(dir, "data", "metadata"),
            "--bookkeeper-port",
            String(ports.pulsarBookie),
          ],
        };
      },
      ready: async () => {
        // The broker's own health check writes and reads a heartbeat topic: storage works too.
        const response = await fetch(`http://127.0.0.1:${ports.pulsarWeb}/admin/v2/brokers/health`, {
          signal: AbortSignal.timeout(5_000),
        });
        return response.ok;
      },
    },
  };
  return specs;
}

/** The JVM options of Cassandra's own conf/jvm17-server.options (G1, JPMS exports/opens, Netty). */
const CASSANDRA_JDK17_OPTIONS = [
  "-XX:+UseG1GC",
  "-XX:+ParallelRefProcEnabled",
  "-XX:MaxTenuringThreshold=1",
  "-XX:G1HeapRegionSize=16m",
  "-XX:G1RSetUpdatingPauseTimePercent=5",
  "-XX:MaxGCPauseMillis=300",
  "-XX:InitiatingHeapOccupancyPercent=70",
  "-Djdk.attach.allowAttachSelf=true",
  ...[
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
  ].flatMap((target) => ["--add-exports", `${target}=ALL-UNNAMED`]),
  ...[
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
  ].flatMap((target) => ["--add-opens", `${target}=ALL-UNNAMED`]),
  "-Dio.netty.tryReflectionSetAccessible=true",
  "-Dio.netty.allocator.useCacheForAllThreads=true",
  "-Dio.netty.allocator.maxOrder=11",
];

/** What Pulsar's own launcher opens on JDK 17 (BookKeeper and Netty reach into the JDK). */
const PULSAR_JDK17_OPTIONS = [
  "java.base/java.io",
  "java.base/java.util.zip",
  "java.base/sun.net",
  "java.management/sun.management",
  "jdk.management/com.sun.management.internal",
  "java.base/jdk.internal.platform",
  "java.base/java.nio",
  "java.base/sun.nio.ch",
  "java.base/java.lang",
].flatMap((target) => ["--add-opens", `${target}=ALL-UNNAMED`]);

function writeCassandraConfig(dir: string, ports: EnginePorts) {
  const conf = join(dir, "conf");
  const data = join(dir, "data");
  mkdirSync(conf, { recursive: true });
  mkdirSync(data, { recursive: true });
  // A minimal single-node cluster: every directory under the state folder, loopback only.
  writeFileSync(
    join(conf, "cassandra.yaml"),
    [
      "cluster_name: parley",
      "num_tokens: 16",
      "allocate_tokens_for_local_replication_factor: 1",
      "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
      "seed_provider:",
      "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
      "    parameters:",
      `      - seeds: "127.0.0.1:${ports.cassandraStorage}"`,
      "listen_address: 127.0.0.1",
      `storage_port: ${ports.cassandraStorage}`,
      "rpc_address: 127.0.0.1",
      `native_transport_port: ${ports.cassandraNative}`,
      "start_native_transport: true",
      "endpoint_snitch: SimpleSnitch",
      "data_file_directories:",
      `  - ${join(data, "data")}`,
      `commitlog_directory: ${join(data, "commitlog")}`,
      `saved_caches_directory: ${join(data, "saved_caches")}`,
      `hints_directory: ${join(data, "hints")}`,
      `cdc_raw_directory: ${join(data, "cdc_raw")}`,
      // The commit log is synced every 10 s (Cassandra's default): a single dev node that loses
      // power may lose the last seconds; production clusters rely on replicas instead.
      "commitlog_sync: periodic",
      "commitlog_sync_period: 10000ms",
      "authenticator: AllowAllAuthenticator",
      "authorizer: AllowAllAuthorizer",
      "concurrent_reads: 16",
      "concurrent_writes: 16",
      "user_defined_functions_enabled: false",
      // Lightweight transactions (history's inbox placement, key claims, group commits) in half the
      // round trips of Paxos v1; safe from the start on a new cluster.
      "paxos_variant: v2",
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(conf, "logback.xml"),
    `<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${join(dir, "system.log")}</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra.service.StorageService" level="INFO"/>
  <logger name="org.apache.cassandra.transport.Server" level="INFO"/>
</configuration>
`,
  );
}

function writePulsarConfig(dir: string, ports: EnginePorts) {
  const conf = join(dir, "conf");
  mkdirSync(conf, { recursive: true });
  mkdirSync(join(dir, "data"), { recursive: true });
  // The standalone broker reads this file for itself and for its embedded bookie.
  writeFileSync(
    join(conf, "standalone.conf"),
    [
      "clusterName=standalone",
      "bindAddress=127.0.0.1",
      "advertisedAddress=127.0.0.1",
      `brokerServicePort=${ports.pulsarBroker}`,
      `webServicePort=${ports.pulsarWeb}`,
      // The bookie: loopback only, on its own port.
      "listeningInterface=lo",
      `bookiePort=${ports.pulsarBookie}`,
      "allowLoopback=true",
      ...Object.entries(PULSAR_SETTINGS_PARLEY_RELIES_ON).map(([name, value]) => `${name}=${value}`),
      "functionsWorkerEnabled=false",
      // One bookie.
      "managedLedgerDefaultEnsembleSize=1",
      "managedLedgerDefaultWriteQuorum=1",
      "managedLedgerDefaultAckQuorum=1",
      "authenticationEnabled=false",
      "authorizationEnabled=false",
      "numIOThreads=2",
      "numHttpServerThreads=8",
      "dbStorage_writeCacheMaxSizeMb=64",
      "dbStorage_readAheadCacheMaxSizeMb=64",
      "dbStorage_rocksDB_blockCacheSize=33554432",
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(conf, "log4j2.xml"),
    `<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="${join(dir, "pulsar.log")}">
      <PatternLayout pattern="%d{ISO8601} %-5level [%t] %c{1} - %msg%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="file"/></Root>
    <Logger name="org.apache.pulsar.PulsarStandalone" level="info"/>
  </Loggers>
</Configuration>
`,
  );
}

/** Redis answers PING with +PONG once it has loaded its data. */
function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(1_000);
    let reply = "";
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString();
      if (reply.includes("\r\n")) {
        socket.destroy();
        resolve(reply.startsWith("+PONG"));
      }
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(false));
  });
}
