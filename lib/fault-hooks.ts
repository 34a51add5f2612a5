// FAULT TESTS ONLY (test/fault): the pieces the services' test-only switches share. Nothing here
// runs unless a main.ts found its PARLEY_<SERVICE>_FAULT_* variable set.
import { unlinkSync } from "node:fs";
import type { Broker } from "./broker/broker.ts";
import type { Logger } from "./logging.ts";

/**
 * Removes an armed kill file; true for the one caller that removed it, so of several processes
 * sharing the file only one dies.
 */
export function takeKillFile(path: string): boolean {
  try {
    unlinkSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Logs why, then SIGKILLs this process: no cleanup, no flush, as a crash would. */
export function killSelf(logger: Logger, why: string, fields: Record<string, unknown> = {}): void {
  logger.error(fields, `FAULT TEST HOOK: SIGKILL ${why}`);
  process.kill(process.pid, "SIGKILL");
}

/** `broker` with some of its methods replaced; the others delegate to it. */
export function brokerWith(
  broker: Broker,
  overrides: Partial<Pick<Broker, "publish" | "subscribe">>,
): Broker {
  return {
    publish: overrides.publish ?? ((topic, message) => broker.publish(topic, message)),
    publishEphemeral: (topic, message) => broker.publishEphemeral(topic, message),
    subscribe:
      overrides.subscribe ?? ((topic, options, handler) => broker.subscribe(topic, options, handler)),
    follow: (topic, options, handler) => broker.follow(topic, options, handler),
    close: () => broker.close(),
    ...(broker.backlog === undefined ? {} : { backlog: broker.backlog.bind(broker) }),
  };
}
