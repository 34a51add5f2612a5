import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Status } from "nice-grpc";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import { SeqOrder } from "../../gen/parley/history/v1/history_pb.ts";
import type {
  AcknowledgementOutcomeSchema,
  MarkDeliveredRequest,
  MarkReadRequest,
} from "../../gen/parley/history/v1/history_service_pb.ts";
import { HistoryService } from "../../gen/parley/history/v1/history_service_pb.ts";
import { invalidArgument, toParleyError, toStatus } from "../../lib/errors.ts";
import { logIfUnexpected } from "../../lib/grpc/error-mapping.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import { inBatchItemSpan } from "../../lib/grpc/tracing.ts";
import type { Logger } from "../../lib/logging.ts";
import { currentTraceparent } from "../../lib/telemetry.ts";
import { messageProto, receiptProto } from "./domain/events.ts";
import type { History, MarkCommand } from "./domain/history.ts";
import type { DeviceRef, ReceiptState } from "./domain/model.ts";

/** The batch call's method path: the errors of its items are logged under it, and their spans named after it. */
const RECORD_ACKNOWLEDGEMENTS_PATH = `/${HistoryService.typeName}/${HistoryService.method.recordAcknowledgements.name}`;

type AcknowledgementOutcome = MessageInitShape<typeof AcknowledgementOutcomeSchema>;
/** An acknowledgement's kind, checked present: what its MarkDelivered or MarkRead call would carry. */
type AcknowledgementKind = {
  readonly case: "delivered" | "read";
  readonly value: MarkDeliveredRequest | MarkReadRequest;
};

/** HistoryService over the history use cases: protobuf in, domain command, protobuf out. */
export function createHistoryHandlers(
  history: History,
  logger: Logger,
): GrpcServiceImplementation<typeof HistoryService> {
  /** One acknowledgement of a batch, answered as its own call would be (errors as the error mapping sends them). */
  async function acknowledgementOutcome(
    acknowledgement: AcknowledgementKind,
    traceparent: string,
  ): Promise<AcknowledgementOutcome> {
    // Under the ack's own trace when it has one, so the receipt event continues that trace.
    return inBatchItemSpan(
      {
        path: RECORD_ACKNOWLEDGEMENTS_PATH,
        name: acknowledgement.case,
        traceparent,
        attributes: { "parley.conversation_id": acknowledgement.value.conversationId },
      },
      () => recordAcknowledgement(acknowledgement),
      ({ outcome }) =>
        outcome?.case === "error"
          ? { code: outcome.value?.code ?? Status.UNKNOWN, message: outcome.value?.message }
          : { code: Status.OK },
    );
  }

  async function recordAcknowledgement(
    acknowledgement: AcknowledgementKind,
  ): Promise<AcknowledgementOutcome> {
    try {
      const command = markCommand(acknowledgement.value);
      const result =
        acknowledgement.case === "read"
          ? await history.markRead(command)
          : await history.markDelivered(command);
      return {
        outcome: { case: "result", value: { recorded: result.recorded, state: stateProto(result.state) } },
      };
    } catch (err) {
      const parley = toParleyError(err);
      logIfUnexpected(parley, logger, RECORD_ACKNOWLEDGEMENTS_PATH);
      return { outcome: { case: "error", value: toStatus(parley) } };
    }
  }

  return {
    async sync(request) {
      const result = await history.sync({
        device: device(request.device),
        cursor: request.cursor,
        pageSize: request.pageSize,
        fromOldestUnacknowledged: request.fromOldestUnacknowledged,
      });
      return {
        items: result.items.map((item) => ({
          cursor: item.cursor,
          item:
            item.kind === "message"
              ? { case: "message" as const, value: messageProto(item.message, item.message.ciphertext) }
              : { case: "receipt" as const, value: receiptProto(item.receipt) },
        })),
        nextCursor: result.nextCursor,
        more: result.more,
        watermarks: result.watermarks.map((w) => ({
          conversationId: w.conversationId,
          lastSeq: BigInt(w.lastSeq),
        })),
      };
    },

    async listMessages(request) {
      const result = await history.listMessages({
        device: device(request.device),
        conversationId: request.conversationId,
        afterSeq: seqNumber(request.afterSeq),
        beforeSeq: seqNumber(request.beforeSeq),
        order: request.order === SeqOrder.OLDEST_FIRST ? "oldest_first" : "newest_first",
        pageSize: request.pageSize,
        pageToken: request.pageToken,
      });
      return {
        messages: result.messages.map((m) => messageProto(m, m.ciphertext)),
        nextPageToken: result.nextPageToken,
        lastSeq: BigInt(result.lastSeq),
      };
    },

    async markDelivered(request) {
      const result = await history.markDelivered(markCommand(request));
      return { recorded: result.recorded, state: stateProto(result.state) };
    },

    async markRead(request) {
      const result = await history.markRead(markCommand(request));
      return { recorded: result.recorded, state: stateProto(result.state) };
    },

    async recordAcknowledgements(request) {
      // protovalidate requires each kind; this narrows the type before any of them is recorded.
      const items = request.acknowledgements.map(({ kind, traceparent }) => {
        if (kind.case === undefined) {
          throw invalidArgument("VALIDATION_FAILED", "acknowledgements[].kind is required");
        }
        return { kind, traceparent };
      });
      // Side by side, so their store writes share one commit (the SQLite store's group commit, the
      // Cassandra store's concurrent writes); each is recorded as its own call would record it.
      return {
        outcomes: await Promise.all(
          items.map(({ kind, traceparent }) => acknowledgementOutcome(kind, traceparent)),
        ),
      };
    },

    async getReceipts(request) {
      const result = await history.getReceipts({
        device: device(request.device),
        conversationId: request.conversationId,
        messageId: request.messageId,
        pageSize: request.pageSize,
        pageToken: request.pageToken,
      });
      return {
        members: result.members.map((m) => ({
          userId: m.userId,
          state: stateProto(m.state),
          ...(m.deliveredAt === undefined ? {} : { deliveredAt: timestampFromDate(m.deliveredAt) }),
          ...(m.readAt === undefined ? {} : { readAt: timestampFromDate(m.readAt) }),
        })),
        nextPageToken: result.nextPageToken,
        messageSeq: BigInt(result.messageSeq),
        recipientCount: result.recipientCount,
        deliveredCount: result.deliveredCount,
        readCount: result.readCount,
      };
    },

    async requestResend(request) {
      await history.requestResend({
        device: device(request.device),
        conversationId: request.conversationId,
        messageId: request.messageId,
        identityKey: request.identityKey,
        traceparent: currentTraceparent(),
      });
      return {};
    },
  };
}

function device(address: DeviceAddress | undefined): DeviceRef {
  // protovalidate has checked presence already; this narrows the type.
  if (address === undefined) throw invalidArgument("VALIDATION_FAILED", "device is required");
  return { userId: address.userId, deviceId: address.deviceId };
}

/** A uint64 seq as a number; beyond 2^53 it is clamped (no conversation gets there). */
function seqNumber(value: bigint): number {
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

function markCommand(request: MarkDeliveredRequest | MarkReadRequest): MarkCommand {
  let target: MarkCommand["target"];
  switch (request.target.case) {
    case "upToSeq":
      target = { upToSeq: seqNumber(request.target.value) };
      break;
    case "messageIds":
      target = { messageIds: request.target.value.messageIds };
      break;
    default:
      throw invalidArgument("VALIDATION_FAILED", "up_to_seq or message_ids is required");
  }
  return {
    device: device(request.device),
    conversationId: request.conversationId,
    target,
    at: request.at === undefined ? undefined : timestampDate(request.at),
    traceparent: currentTraceparent(),
  };
}

function stateProto(state: ReceiptState) {
  return { deliveredUpToSeq: BigInt(state.deliveredUpToSeq), readUpToSeq: BigInt(state.readUpToSeq) };
}
