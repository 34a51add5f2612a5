/** The ports the sender's domain needs; adapters in ../adapters implement them. */
import type { Envelope } from "../../../gen/parley/common/v1/envelope_pb.ts";

export type { ConversationDirectory, ConversationMembership } from "../../../lib/views/conversation-view.ts";
export type {
  CatchingUpDirectory,
  MembershipSource,
} from "../../../lib/views/membership-catch-up.ts";

/** The active devices of users, from the key service (cached: sending is the hot path). */
export interface DeviceDirectory {
  /** Device ids by user id; users without devices map to an empty list. */
  activeDevices(
    askingUserId: string,
    userIds: readonly string[],
  ): Promise<ReadonlyMap<string, readonly string[]>>;
}

/** What the sender remembers of an accepted message, by the sender's idempotency key. */
export interface AcceptedRecord {
  readonly messageId: string;
  /** SHA-256 of the request's content (conversation and envelope), to tell a retry from a reuse. */
  readonly contentDigest: string;
  readonly acceptedAt: Date;
  /**
   * False from the reservation until the broker confirmed the publish: a retry that finds an
   * unconfirmed record publishes again under the same message id (history stores it once).
   */
  readonly published: boolean;
}

/**
 * Idempotency keys (Redis in the cluster; SQLite or memory in the embedded profile). The id is
 * reserved before the message is published, so a retry after any crash answers the first id.
 * Losing the keys (a Redis flush) is tolerated: history also deduplicates by the idempotency key,
 * so it costs at worst a new id for a message stored once, never a lost or doubled message.
 */
export interface IdempotencyStore {
  get(key: string): Promise<AcceptedRecord | undefined>;
  /** Stores `record` unless the key already has one; resolves to the record the key now holds. */
  reserve(key: string, record: AcceptedRecord): Promise<AcceptedRecord>;
  /** The broker holds the message: retries answer without publishing again. */
  markPublished(key: string): Promise<void>;
}

/** An accepted message on its way to history: resolves once the broker holds it durably. */
export interface AcceptedMessagePublisher {
  publish(message: AcceptedMessage): Promise<void>;
}

export interface DeviceRef {
  readonly userId: string;
  readonly deviceId: string;
}

export interface AcceptedMessage {
  readonly messageId: string;
  readonly conversationId: string;
  readonly sender: DeviceRef;
  readonly clientMessageId: string;
  readonly envelope: Envelope;
  readonly acceptedAt: Date;
  readonly recipientDevices: readonly DeviceRef[];
  readonly membershipVersion: bigint;
  readonly forceTrace: boolean;
}

/**
 * Counts what SREs watch on the sender (OpenTelemetry adapter in service.ts). Rate-limit refusals
 * are counted by the limiter itself (lib/metrics.ts `countRejections`).
 */
export interface SenderMetrics {
  /**
   * Recipients a message did not go to because they block its sender: `direct`, a 1:1 message
   * refused (RECIPIENT_REFUSES); `group`, members left out of an accepted group message (counted
   * once per message, not again for its retries).
   */
  blockedSenderDrops(kind: "direct" | "group", recipients: number): void;
}
