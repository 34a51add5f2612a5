/** What the Cassandra history store's parts share. */
import type { CassandraOutbox } from "../../../../lib/cassandra/outbox.ts";
import type { CassandraClient } from "../../../../lib/cassandra/session.ts";
import type { Logger } from "../../../../lib/logging.ts";
import type { DeviceDirectory } from "./devices.ts";
import type { DeviceInboxes } from "./inbox.ts";
import type { MessageReads } from "./messages.ts";
import type { HistoryTables } from "./schema.ts";

/** The durable steps of a change, in order (for fault tests: see `afterStep`). */
export type CommitStep =
  | "message:staged"
  | "message:claimed"
  | "message:written"
  | "message:placed"
  | "message:published"
  | "message:released"
  | "receipt:claimed"
  | "receipt:marked"
  | "receipt:cleared"
  | "receipt:placed"
  | "receipt:published";

export interface StoreContext {
  readonly client: CassandraClient;
  readonly tables: HistoryTables;
  readonly logger: Logger;
  readonly outbox: CassandraOutbox;
  readonly inboxes: DeviceInboxes;
  readonly devices: DeviceDirectory;
  readonly messages: MessageReads;
  /** Devices (or users) written concurrently while a change fans out. */
  readonly concurrency: number;
  /** How long a step another writer left pending is waited for before it is finished here. */
  readonly takeOverAfterMs: number;
  /** Called after each durable step; throwing there stops the change as a crash would. */
  readonly afterStep: (step: CommitStep) => void;
}

/** A call that keeps losing races for this long gives up (the broker or the client retries it). */
export const STEP_DEADLINE_MS = 60_000;
