// A history consumer that is SIGKILLed right after it committed one chosen message, before the
// broker stored its acknowledgement (and with no outbox relay, so its events stay in the outbox).
// Usage: node consume-and-crash.ts <dataDir> <messageIdToCrashAfter>
import { join } from "node:path";
import { createEmbeddedBroker } from "../../../../../lib/broker/embedded-broker.ts";
import { createLogger } from "../../../../../lib/logging.ts";
import { createMemoryRateLimiter } from "../../../../../lib/rate-limit.ts";
import { ConversationView } from "../../../../../lib/views/conversation-view.ts";
import { createHistory } from "../../../domain/history.ts";
import { createSqliteHistoryStore } from "../../sqlite/sqlite-history-store.ts";
import { startMessageConsumer } from "../message-consumer.ts";

const [dataDir = "", crashAfter = ""] = process.argv.slice(2);
const logger = createLogger("crashing-history", "silent");
const broker = await createEmbeddedBroker({ path: join(dataDir, "broker.db"), logger });
const store = createSqliteHistoryStore({ path: join(dataDir, "parley.db") });
const history = createHistory({
  store,
  conversations: new ConversationView(),
  resendLimiter: createMemoryRateLimiter({ burst: 1, perSecond: 1 }),
});
await startMessageConsumer({
  broker,
  logger,
  ingest: async (message) => {
    const result = await history.ingest(message);
    if (message.messageId === crashAfter) process.kill(process.pid, "SIGKILL");
    return result;
  },
});
