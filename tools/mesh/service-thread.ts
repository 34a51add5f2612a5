/**
 * A service of the embedded mesh on its own worker thread, so the process uses a second core: the
 * service's gRPC server listens in the worker (callers reach it over loopback as before), the
 * broker stays on the main thread and is reached over a MessagePort (lib/broker/message-port-
 * broker.ts), and the worker's spans and metric records go to the main thread's exporters
 * (lib/thread-telemetry.ts). `startServiceThread` is the main thread's side, `runServiceThread`
 * the worker's.
 */
import { MessageChannel, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import type { Broker } from "../../lib/broker/broker.ts";
import type { BrokerPortServer } from "../../lib/broker/message-port-broker.ts";
import { createMessagePortBroker, serveBrokerOverPort } from "../../lib/broker/message-port-broker.ts";
import type { Logger, LogLevel } from "../../lib/logging.ts";
import { createLogger } from "../../lib/logging.ts";
import type { ThreadTelemetrySettings } from "../../lib/thread-telemetry.ts";
import { receiveThreadTelemetry, startThreadTelemetry } from "../../lib/thread-telemetry.ts";

/** How long a stopping worker may take (its server's drain, its consumers) before it is terminated. */
const STOP_TIMEOUT_MS = 15_000;

interface ServiceThreadData<Settings> {
  readonly name: string;
  readonly settings: Settings;
  readonly logLevel: LogLevel;
  /** The main thread's logger's name and bindings, so the worker's lines read like its own. */
  readonly logBindings: Record<string, unknown>;
  readonly brokerPort: MessagePort;
  readonly telemetryPort: MessagePort;
  readonly telemetry: ThreadTelemetrySettings;
}

type WorkerReport =
  | { type: "ready"; address: string }
  | { type: "failed"; error: string }
  | { type: "stopped" };

export interface ServiceThread {
  /** host:port of the service's gRPC server in the worker. */
  readonly address: string;
  /** Stops the service in the worker (its server drains), then the worker and its bridges. */
  stop(): Promise<void>;
}

/**
 * Starts `entry` (a module that calls `runServiceThread`) on a worker thread and resolves once its
 * server listens. `onUnexpectedExit` is called if the worker dies before stop() was asked for.
 */
export async function startServiceThread<Settings>(options: {
  readonly name: string;
  readonly entry: URL;
  readonly settings: Settings;
  readonly broker: Broker;
  readonly logger: Logger;
  readonly onUnexpectedExit: (error: Error) => void;
}): Promise<ServiceThread> {
  const brokerChannel = new MessageChannel();
  const telemetryChannel = new MessageChannel();
  const brokerServer: BrokerPortServer = serveBrokerOverPort(options.broker, brokerChannel.port1);
  const telemetry = receiveThreadTelemetry(telemetryChannel.port1, options.name);
  const data: ServiceThreadData<Settings> = {
    name: options.name,
    settings: options.settings,
    logLevel: options.logger.level as LogLevel,
    logBindings: options.logger.bindings(),
    brokerPort: brokerChannel.port2,
    telemetryPort: telemetryChannel.port2,
    telemetry: telemetry.settings,
  };
  const worker = new Worker(options.entry, {
    workerData: data,
    transferList: [brokerChannel.port2, telemetryChannel.port2],
  });
  let stopping = false;
  let ready = false;
  let stopped: (() => void) | undefined;
  const exited = new Promise<number>((resolve) => worker.once("exit", resolve));
  const closeBridges = async () => {
    await brokerServer.close();
    telemetry.close();
  };
  let failure: Error | undefined;
  worker.on("error", (err) => {
    failure = err;
    options.logger.error({ err, thread: options.name }, `the ${options.name} thread failed`);
  });
  const address = await new Promise<string>((resolve, reject) => {
    worker.on("message", (report: WorkerReport) => {
      if (report.type === "ready") {
        ready = true;
        resolve(report.address);
      } else if (report.type === "failed")
        reject(new Error(`${options.name} thread failed to start: ${report.error}`));
      else stopped?.();
    });
    void exited.then((code) => {
      const error = failure ?? new Error(`the ${options.name} thread exited with code ${code}`);
      reject(error);
      // Before it was ready, the failure is startServiceThread's rejection.
      if (ready && !stopping) {
        options.logger.error({ err: error, thread: options.name }, `the ${options.name} thread died`);
        void closeBridges();
        options.onUnexpectedExit(error);
      }
    });
  }).catch(async (err: unknown) => {
    stopping = true;
    await worker.terminate();
    await closeBridges();
    throw err;
  });
  return {
    address,
    async stop() {
      if (stopping) return;
      stopping = true;
      const done = new Promise<void>((resolve) => {
        stopped = resolve;
      });
      worker.postMessage({ type: "stop" });
      const timedOut = await Promise.race([
        done.then(() => false),
        exited.then(() => false),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(true), STOP_TIMEOUT_MS).unref()),
      ]);
      if (timedOut)
        options.logger.warn({ thread: options.name }, `the ${options.name} thread did not stop in time`);
      await worker.terminate();
      await closeBridges();
    },
  };
}

/** What a worker's service hands back once it listens. */
export interface ThreadService {
  readonly address: string;
  stop(): Promise<void>;
}

/**
 * The worker's side: starts telemetry, builds the bridged broker and a logger, runs `start`, and
 * reports to the main thread; stops when asked.
 */
export async function runServiceThread<Settings>(
  start: (context: { settings: Settings; broker: Broker; logger: Logger }) => Promise<ThreadService>,
): Promise<void> {
  const data = workerData as ServiceThreadData<Settings>;
  const port = parentPort;
  if (port === null) throw new Error("runServiceThread runs on a worker thread");
  const stopTelemetry = startThreadTelemetry(data.telemetryPort, data.telemetry);
  const { name, ...bindings } = data.logBindings;
  const logger = createLogger(typeof name === "string" ? name : data.name, data.logLevel).child(bindings);
  const broker = createMessagePortBroker(data.brokerPort);
  let service: ThreadService;
  try {
    service = await start({ settings: data.settings, broker, logger });
  } catch (err) {
    logger.fatal({ err }, `${data.name} failed to start`);
    await broker.close();
    await stopTelemetry();
    port.postMessage({ type: "failed", error: err instanceof Error ? err.message : String(err) });
    return;
  }
  port.on("message", async (message: { type: "stop" }) => {
    if (message.type !== "stop") return;
    try {
      await service.stop();
      await broker.close();
    } catch (err) {
      logger.error({ err }, `${data.name} did not stop cleanly`);
    }
    await stopTelemetry();
    port.postMessage({ type: "stopped" });
  });
  port.postMessage({ type: "ready", address: service.address });
}
