import { createHash } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import type { Envelope } from "../../../gen/parley/common/v1/envelope_pb.ts";
import { ContentKind, EnvelopeSchema } from "../../../gen/parley/common/v1/envelope_pb.ts";
import {
  alreadyExists,
  failedPrecondition,
  notFound,
  permissionDenied,
  resourceExhausted,
} from "../../../lib/errors.ts";
import type { RateLimiter } from "../../../lib/rate-limit.ts";
import { membershipAfterCatchUp } from "../../../lib/views/membership-catch-up.ts";
import type {
  AcceptedMessagePublisher,
  AcceptedRecord,
  CatchingUpDirectory,
  DeviceDirectory,
  DeviceRef,
  IdempotencyStore,
  MembershipSource,
  SenderMetrics,
} from "./ports.ts";

export interface SendCommand {
  readonly sender: DeviceRef;
  readonly conversationId: string;
  readonly clientMessageId: string;
  readonly envelope: Envelope;
  readonly forceTrace: boolean;
}

export interface SendOutcome {
  readonly messageId: string;
  readonly acceptedAt: Date;
  readonly duplicate: boolean;
}

export interface SenderDeps {
  readonly conversations: CatchingUpDirectory;
  /**
   * Asked when the view does not know the sender as a member yet; without it such a send is
   * refused NOT_FOUND at once.
   */
  readonly membership?: MembershipSource;
  /** How long a send waits for the view to catch up with the membership source. Default 5 s. */
  readonly viewCatchUpMs?: number;
  readonly devices: DeviceDirectory;
  readonly idempotency: IdempotencyStore;
  /** Per device (`user/device`), one token per send. */
  readonly rateLimiter: RateLimiter;
  readonly publisher: AcceptedMessagePublisher;
  readonly metrics: SenderMetrics;
  readonly newMessageId: () => string;
  readonly now?: () => Date;
}

// Kinds that may address a subset of the conversation's devices: a sender key is handed only to
// devices that lack it, and a resend goes only to the device that asked.
const SUBSET_KINDS: ReadonlySet<number> = new Set([
  ContentKind.SENDER_KEY_DISTRIBUTION,
  ContentKind.RESEND_REQUEST,
]);

// How many device addresses an error lists in its metadata, so a client can fix its device list.
const LISTED_DEVICES = 20;

/**
 * Accepts one message: rate limit, idempotency, membership and blocks (from the local view),
 * recipients' devices (from the key service), then publishes it and answers once the broker holds
 * it durably. Concurrent retries of one client_message_id share the first attempt.
 */
export function createSendMessage(deps: SenderDeps): (command: SendCommand) => Promise<SendOutcome> {
  const now = deps.now ?? (() => new Date());
  const inFlight = new Map<string, { readonly digest: string; readonly outcome: Promise<SendOutcome> }>();

  return async (command) => {
    const key = idempotencyKey(command.sender, command.clientMessageId);
    const digest = contentDigest(command);
    const running = inFlight.get(key);
    if (running !== undefined) {
      const { messageId, acceptedAt } = await running.outcome;
      return sameContentOrRefuse(
        command,
        { messageId, acceptedAt, contentDigest: running.digest, published: true },
        digest,
      );
    }
    // Registered before the first await, so a concurrent retry always finds this attempt.
    const outcome = (async () => {
      const previous = await deps.idempotency.get(key);
      if (previous === undefined) return accept(command, key, digest);
      const answer = sameContentOrRefuse(command, previous, digest);
      // An earlier attempt reserved the id but died (or the broker failed) before the publish was
      // confirmed: publish again under that id; history keeps one copy if the first one landed.
      return previous.published ? answer : accept(command, key, digest, previous);
    })();
    inFlight.set(key, { digest, outcome });
    try {
      return await outcome;
    } finally {
      inFlight.delete(key);
    }
  };

  async function accept(
    command: SendCommand,
    key: string,
    digest: string,
    reserved?: AcceptedRecord,
  ): Promise<SendOutcome> {
    // A retry of a message whose id is already reserved is not a new send: it may not be refused
    // for a rate the first attempt already paid for.
    const limit =
      reserved === undefined
        ? await deps.rateLimiter.take(`${command.sender.userId}/${command.sender.deviceId}`)
        : ({ allowed: true } as const);
    if (!limit.allowed) {
      throw resourceExhausted(
        "RATE_LIMITED",
        "this device is sending too fast; retry later with the same client_message_id",
        {
          retryDelayMs: limit.retryAfterMs,
        },
      );
    }
    const senderUser = command.sender.userId;
    const conversation = await membershipAfterCatchUp(
      deps.conversations,
      deps.membership,
      senderUser,
      command.conversationId,
      {
        ...(deps.viewCatchUpMs === undefined ? {} : { timeoutMs: deps.viewCatchUpMs }),
        retryHint: "retry with the same client_message_id",
      },
    );
    if (conversation === undefined || !conversation.memberUserIds.includes(senderUser)) {
      throw conversationNotFound(command.conversationId);
    }
    const others = conversation.memberUserIds.filter((u) => u !== senderUser);
    if (conversation.kind === "direct" && others.some((u) => deps.conversations.blocks(u, senderUser))) {
      deps.metrics.blockedSenderDrops("direct", 1);
      throw permissionDenied(
        "RECIPIENT_REFUSES",
        "the recipient does not accept messages from you in this conversation",
      );
    }
    if (conversation.deleted) throw conversationNotFound(command.conversationId);

    // Members who block the sender get nothing from them, in groups too, without the sender knowing.
    const audience = [senderUser, ...others.filter((u) => !deps.conversations.blocks(u, senderUser))];
    const devicesByUser = await deps.devices.activeDevices(senderUser, audience);
    const expected = new Set<string>();
    for (const user of audience) {
      for (const device of devicesByUser.get(user) ?? []) {
        if (user === senderUser && device === command.sender.deviceId) continue;
        expected.add(address(user, device));
      }
    }
    const recipients = resolveRecipients(command, expected, new Set(others));
    const fresh: AcceptedRecord = {
      messageId: deps.newMessageId(),
      contentDigest: digest,
      acceptedAt: now(),
      published: false,
    };
    const record = reserved ?? (await deps.idempotency.reserve(key, fresh));
    // Another replica may have reserved the key first: its record wins, its content must match.
    const { messageId, acceptedAt } = sameContentOrRefuse(command, record, digest);
    await deps.publisher.publish({
      messageId,
      conversationId: command.conversationId,
      sender: command.sender,
      clientMessageId: command.clientMessageId,
      envelope: command.envelope,
      acceptedAt,
      recipientDevices: recipients,
      membershipVersion: conversation.version,
      forceTrace: command.forceTrace,
    });
    await deps.idempotency.markPublished(key);
    // Ours only if this attempt made the reservation; otherwise an earlier attempt chose the id.
    const duplicate = record.messageId !== fresh.messageId;
    const blockers = others.length - (audience.length - 1);
    if (blockers > 0 && !duplicate) deps.metrics.blockedSenderDrops("group", blockers);
    return { messageId, acceptedAt, duplicate };
  }
}

/**
 * The devices a message goes to. A shared payload goes to every expected device. Pairwise payloads
 * must address only current devices of members (a stale device means the client's list is out of
 * date) and, except for subset kinds, every one of them (a missing device would never see it).
 */
function resolveRecipients(
  command: SendCommand,
  expected: ReadonlySet<string>,
  members: ReadonlySet<string>,
): DeviceRef[] {
  const payload = command.envelope.payload;
  if (payload.case !== "perDevice") {
    return [...expected].map(parseAddress);
  }
  const addressed = new Set<string>();
  const stale: string[] = [];
  for (const recipient of payload.value.recipients) {
    if (recipient.userId !== command.sender.userId && !members.has(recipient.userId)) {
      throw failedPrecondition(
        "RECIPIENT_NOT_MEMBER",
        `${recipient.userId} is not a member of this conversation`,
        {
          metadata: { userId: recipient.userId },
        },
      );
    }
    for (const device of recipient.devices) {
      const key = address(recipient.userId, device.deviceId);
      if (addressed.has(key)) {
        throw failedPrecondition("DUPLICATE_DEVICE", `device ${key} is addressed twice`, {
          metadata: { device: key },
        });
      }
      addressed.add(key);
      if (!expected.has(key)) stale.push(key);
    }
  }
  const missing = SUBSET_KINDS.has(command.envelope.kind)
    ? []
    : [...expected].filter((d) => !addressed.has(d));
  if (stale.length > 0 || missing.length > 0) {
    throw failedPrecondition(
      "DEVICE_LIST_MISMATCH",
      `the message's devices do not match the conversation's: ${missing.length} missing, ${stale.length} stale; fetch the members' devices again (GetIdentityKeys) and re-encrypt`,
      {
        metadata: {
          missingDevices: missing.slice(0, LISTED_DEVICES).join(","),
          staleDevices: stale.slice(0, LISTED_DEVICES).join(","),
          missingCount: String(missing.length),
          staleCount: String(stale.length),
        },
      },
    );
  }
  return [...addressed].filter((d) => expected.has(d)).map(parseAddress);
}

/** A retry of an accepted message answers as the original did; reusing its id for new content is refused. */
function sameContentOrRefuse(command: SendCommand, previous: AcceptedRecord, digest: string): SendOutcome {
  if (previous.contentDigest !== digest) {
    throw alreadyExists(
      "CLIENT_MESSAGE_ID_REUSED",
      `client_message_id ${command.clientMessageId} was already used for a different message; use a new UUID for each new message`,
      { metadata: { messageId: previous.messageId } },
    );
  }
  return { messageId: previous.messageId, acceptedAt: previous.acceptedAt, duplicate: true };
}

function conversationNotFound(conversationId: string) {
  return notFound(
    "CONVERSATION_NOT_FOUND",
    `conversation ${conversationId} does not exist or you are not a member`,
  );
}

function idempotencyKey(sender: DeviceRef, clientMessageId: string): string {
  return `${sender.userId}/${sender.deviceId}/${clientMessageId}`;
}

function contentDigest(command: SendCommand): string {
  return createHash("sha256")
    .update(command.conversationId)
    .update(toBinary(EnvelopeSchema, command.envelope))
    .digest("base64url");
}

function address(userId: string, deviceId: string): string {
  return `${userId}/${deviceId}`;
}

function parseAddress(key: string): DeviceRef {
  const slash = key.indexOf("/");
  return { userId: key.slice(0, slash), deviceId: key.slice(slash + 1) };
}
