// How the store contract's worker threads open the Cassandra store: their own driver client on the
// same keyspace and tables. The contract opens stores synchronously, so calls wait for the connection.
import { openCassandra } from "../../../../lib/cassandra/session.ts";
import { createLogger } from "../../../../lib/logging.ts";
import type { HistoryStore } from "../../domain/history-store.ts";
import { createCassandraHistoryStore } from "./cassandra-history-store.ts";

export interface WorkerStoreConfig {
  readonly contactPoints: readonly string[];
  readonly localDataCenter: string;
  readonly keyspace: string;
  readonly tablePrefix: string;
  readonly messagesPerBucket: number;
}

export function openHistoryStore(config: unknown): HistoryStore {
  const c = config as WorkerStoreConfig;
  const logger = createLogger("history-store-worker", "silent");
  const opened = (async () => {
    const client = await openCassandra({
      contactPoints: c.contactPoints,
      localDataCenter: c.localDataCenter,
      keyspace: c.keyspace,
      logger,
    });
    const store = await createCassandraHistoryStore({
      client,
      logger,
      tablePrefix: c.tablePrefix,
      messagesPerBucket: c.messagesPerBucket,
    });
    return { client, store };
  })();
  const store = async () => (await opened).store;
  return {
    outbox: {
      pending: async (limit) => (await store()).outbox.pending(limit),
      markPublished: async (ids) => (await store()).outbox.markPublished(ids),
    },
    storeMessage: async (input, events) => (await store()).storeMessage(input, events),
    readInbox: async (input) => (await store()).readInbox(input),
    oldestUnacknowledgedPosition: async (device, now) =>
      (await store()).oldestUnacknowledgedPosition(device, now),
    lastSeqs: async (ids) => (await store()).lastSeqs(ids),
    listMessages: async (input) => (await store()).listMessages(input),
    recordReceipt: async (input, event) => (await store()).recordReceipt(input, event),
    receiptStates: async (conversationId, userIds) => (await store()).receiptStates(conversationId, userIds),
    messageReceipts: async (input) => (await store()).messageReceipts(input),
    findMessageForDevice: async (input) => (await store()).findMessageForDevice(input),
    dropDevice: async (input) => (await store()).dropDevice(input),
    appendEvents: async (events) => (await store()).appendEvents(events),
    sweepExpired: async (now) => (await store()).sweepExpired(now),
    close() {
      void opened.then(({ client }) => client.shutdown()).catch(() => undefined);
    },
  };
}
