import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Context, context, ROOT_CONTEXT } from "@opentelemetry/api";
import { Status } from "nice-grpc";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import { ReceiptKind } from "../gen/parley/common/v1/message_pb.ts";
import type { Acknowledgement as AckFrame } from "../gen/parley/edge/v1/frames_pb.ts";
import type {
  Acknowledgement,
  HistoryService,
  MarkDeliveredRequest,
} from "../gen/parley/history/v1/history_service_pb.ts";
import { INTERNAL_ERROR_MESSAGE, parleyErrorFromStatus } from "../lib/errors.ts";
import type { GrpcCallOptions, GrpcServiceClient } from "../lib/grpc/client.ts";
import { fromGrpcError } from "../lib/grpc/grpc-error.ts";
import { currentTraceparent } from "../lib/telemetry.ts";

/** What a batched acknowledgement resolves to: the user's watermark of the acknowledged kind. */
export type AcknowledgementBatcher = {
  /**
   * Records `ack` for `device` in the next RecordAcknowledgements call. Resolves with the user's
   * delivered (or read) watermark after it, or rejects with the error its own MarkDelivered or
   * MarkRead call would have failed with.
   */
  submit(device: DeviceAddress, ack: AckFrame): Promise<bigint>;
};

type Pending = {
  readonly acknowledgement: Acknowledgement;
  /** The submitter's context: a call of the acknowledgement's own runs in it. */
  readonly context: Context;
  readonly resolve: (upTo: bigint) => void;
  readonly reject: (err: unknown) => void;
};

/** The request's rules allow this many per call (history_service.proto). */
export const MAX_ACKNOWLEDGEMENTS_PER_CALL = 1000;
/** About 0.4 MB of ids (36-byte UUIDs), far below gRPC's 4 MiB default message limit. */
export const MAX_MESSAGE_IDS_PER_CALL = 10_000;

function messageIdCount(acknowledgement: Acknowledgement): number {
  const target = acknowledgement.kind.value?.target;
  return target?.case === "messageIds" ? target.value.messageIds.length : 0;
}

/**
 * Gathers the acknowledgements a host's device streams receive within one turn of the event loop
 * into one HistoryService.RecordAcknowledgements call: when a 1,000-member group's devices all
 * acknowledge a message at once, history gets a few calls (and commits) instead of one per device.
 * Each acknowledgement is still answered on its own. A call refused as a whole for its rules
 * (INVALID_ARGUMENT, which the edge's own checks should make impossible) is retried one
 * acknowledgement per call, so only the offending one fails, with its own error.
 */
export function createAcknowledgementBatcher(options: {
  readonly history: Pick<
    GrpcServiceClient<typeof HistoryService>,
    "recordAcknowledgements" | "markDelivered" | "markRead"
  >;
  /** Deadline of each call, in ms. */
  readonly deadlineMs: number;
  readonly maxPerCall?: number;
}): AcknowledgementBatcher {
  const maxPerCall = Math.max(
    1,
    Math.min(options.maxPerCall ?? MAX_ACKNOWLEDGEMENTS_PER_CALL, MAX_ACKNOWLEDGEMENTS_PER_CALL),
  );
  const callOptions: GrpcCallOptions = { deadline: options.deadlineMs };
  let queue: Pending[] = [];
  let scheduled = false;

  async function one(item: Pending): Promise<void> {
    try {
      // In the submitter's trace, where the batch item it stands in for would have been.
      const record = () => recordAlone(options.history, item.acknowledgement, callOptions);
      item.resolve(await context.with(item.context, record));
    } catch (err) {
      item.reject(err);
    }
  }

  async function send(batch: Pending[]): Promise<void> {
    let outcomes: Awaited<ReturnType<typeof options.history.recordAcknowledgements>>["outcomes"];
    try {
      ({ outcomes } = await options.history.recordAcknowledgements(
        { acknowledgements: batch.map((item) => item.acknowledgement) },
        callOptions,
      ));
    } catch (err) {
      // Refused as a whole for its rules or its size: one call each, so only an offending one fails.
      const code = fromGrpcError(err).code;
      if ((code === "invalid_argument" || code === "resource_exhausted") && batch.length > 1) {
        await Promise.all(batch.map(one));
        return;
      }
      for (const item of batch) item.reject(err);
      return;
    }
    batch.forEach((item, i) => {
      const outcome = outcomes[i]?.outcome;
      if (outcome?.case === "result") item.resolve(watermarkOf(item.acknowledgement, outcome.value.state));
      else if (outcome?.case === "error") {
        const { code, message, details } = outcome.value;
        // A single call is retried on UNAVAILABLE (it is IDEMPOTENT): so is a batched one, alone.
        if (code === Status.UNAVAILABLE) void one(item);
        else item.reject(parleyErrorFromStatus(code, message, details));
      } else {
        item.reject(
          parleyErrorFromStatus(
            Status.INTERNAL,
            INTERNAL_ERROR_MESSAGE,
            [],
            new Error("history answered fewer acknowledgements than it was sent"),
          ),
        );
      }
    });
  }

  const flush = () => {
    scheduled = false;
    const all = queue;
    queue = [];
    // Calls of at most maxPerCall acknowledgements and MAX_MESSAGE_IDS_PER_CALL message ids, so one
    // client's long id lists cannot push a call past the 4 MiB a gRPC message may carry.
    let batch: Pending[] = [];
    let ids = 0;
    const sendBatch = () => {
      const sending = batch;
      // Outside the trace of whichever ack came first: the call carries everyone's acks.
      if (sending.length > 0) void context.with(ROOT_CONTEXT, () => send(sending));
      batch = [];
      ids = 0;
    };
    for (const item of all) {
      const itemIds = messageIdCount(item.acknowledgement);
      if (batch.length >= maxPerCall || (batch.length > 0 && ids + itemIds > MAX_MESSAGE_IDS_PER_CALL))
        sendBatch();
      batch.push(item);
      ids += itemIds;
    }
    sendBatch();
  };

  return {
    submit(device, ack) {
      const submittedIn = context.active();
      const acknowledgement = toAcknowledgement(device, ack, currentTraceparent(submittedIn));
      return new Promise<bigint>((resolve, reject) => {
        queue.push({ acknowledgement, context: submittedIn, resolve, reject });
        if (!scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      });
    },
  };
}

/** A device's Ack frame as history's Acknowledgement (MarkDelivered or MarkRead request), stamped now. */
export function toAcknowledgement(device: DeviceAddress, ack: AckFrame, traceparent = ""): Acknowledgement {
  const target =
    ack.target.case === "messageIds"
      ? { case: "messageIds" as const, value: { messageIds: ack.target.value.messageIds } }
      : { case: "upToSeq" as const, value: ack.target.value ?? 0n };
  const request = { device, conversationId: ack.conversationId, target, at: timestampFromDate(new Date()) };
  return {
    kind:
      ack.kind === ReceiptKind.READ
        ? { case: "read" as const, value: request }
        : { case: "delivered" as const, value: request },
    traceparent,
  } as Acknowledgement;
}

/**
 * Records one acknowledgement with a MarkDelivered or MarkRead call of its own; resolves with the
 * user's watermark of its kind.
 */
export async function recordAlone(
  history: Pick<GrpcServiceClient<typeof HistoryService>, "markDelivered" | "markRead">,
  acknowledgement: Acknowledgement,
  callOptions: GrpcCallOptions,
): Promise<bigint> {
  const { kind } = acknowledgement;
  const response =
    kind.case === "read"
      ? await history.markRead(kind.value, callOptions)
      : await history.markDelivered(kind.value as MarkDeliveredRequest, callOptions);
  return watermarkOf(acknowledgement, response.state);
}

/** The watermark an acknowledgement moves: read for a read, delivered otherwise. */
function watermarkOf(
  acknowledgement: Acknowledgement,
  state: { readonly deliveredUpToSeq: bigint; readonly readUpToSeq: bigint } | undefined,
): bigint {
  return (acknowledgement.kind.case === "read" ? state?.readUpToSeq : state?.deliveredUpToSeq) ?? 0n;
}
