import type { Attributes, Span } from "@opentelemetry/api";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { PushBatchRequest } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgePushService, PushOutcome } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { GrpcServer } from "../lib/grpc/server.ts";
import { createGrpcServer, grpcService } from "../lib/grpc/server.ts";
import type { Logger } from "../lib/logging.ts";
import { checkPushBatchRequest } from "./push-batch-check.ts";
import { sameDevice } from "./streams/push-frames.ts";
import type { PushedMessages } from "./streams/pushed-messages.ts";
import type { PushBatchResponseInit, StreamHub } from "./streams/stream-hub.ts";

const tracer = trace.getTracer("parley.edge");

/** Ids listed on a push span at most (a 1,000-member group's batch names its counts, not every id). */
const MAX_LISTED_IDS = 32;

/**
 * The edge's internal gRPC server: EdgePushService, which delivery calls to push onto the device
 * streams this process holds (plus health and reflection, like every internal server). Requests
 * are validated by the server's middleware before `hub.push` sees them, with the hand-written
 * `checkPushBatchRequest` (push-batch-check.ts) in place of protovalidate.
 *
 * Each batch is one `edge.push` span under the PushBatch server span (so under delivery's trace of
 * the event): counts of devices and outcomes, and the message and conversation ids, never one span
 * per device. Pushed messages are remembered for the devices' acks (`pushed`: links to their
 * traces, and their acceptance times for the ack latency).
 */
export function createPushServer(hub: StreamHub, logger: Logger, pushed?: PushedMessages): GrpcServer {
  const pushBatch = async (request: PushBatchRequest) =>
    tracer.startActiveSpan("edge.push", { kind: SpanKind.INTERNAL }, (span) => {
      // Only a recorded span gets them (its sampling follows the PushBatch call's): listing the
      // ids of a 1,000-item batch that nobody records is wasted work on the push path.
      if (span.isRecording()) span.setAttributes(batchAttributes(request));
      try {
        const response = hub.push(request);
        if (span.isRecording()) recordOutcomes(span, response);
        if (pushed !== undefined) rememberPushed(pushed, request, response);
        return response;
      } catch (err) {
        if (err instanceof Error) span.recordException(err);
        span.setStatus({ code: SpanStatusCode.ERROR });
        throw err;
      } finally {
        span.end();
      }
    });
  return createGrpcServer({
    name: "edge-push",
    logger,
    // Pushes keep going while the edge drains; by the time this server stops, no stream is left.
    shutdownTimeoutMs: 2_000,
    services: [
      // Checked by hand rather than by protovalidate: the same rules and answers, for a fraction
      // of the CPU (push-batch-check.ts).
      grpcService(EdgePushService, { pushBatch }, { pushBatch: checkPushBatchRequest }),
    ],
  });
}

function batchAttributes(request: PushBatchRequest): Attributes {
  const messageIds = new Set<string>();
  const conversationIds = new Set<string>();
  const kinds = new Set<string>();
  for (const item of request.items) {
    if (item.payload.case !== undefined) kinds.add(item.payload.case);
    if (item.payload.case === "message") {
      messageIds.add(item.payload.value.messageId);
      conversationIds.add(item.payload.value.conversationId);
    } else if (item.payload.case === "receipt") {
      conversationIds.add(item.payload.value.conversationId);
    }
  }
  const devices = request.routes.map((r) => `${r.device?.userId ?? ""}/${r.device?.deviceId ?? ""}`);
  return {
    "parley.batch_id": request.batchId,
    "parley.device.count": request.routes.length,
    "parley.item.count": request.items.length,
    "parley.push.kinds": [...kinds],
    ...(messageIds.size === 0 ? {} : { "parley.message_ids": [...messageIds].slice(0, MAX_LISTED_IDS) }),
    ...(conversationIds.size === 0
      ? {}
      : { "parley.conversation_ids": [...conversationIds].slice(0, MAX_LISTED_IDS) }),
    ...(devices.length <= MAX_LISTED_IDS ? { "parley.device_ids": devices } : {}),
  };
}

function recordOutcomes(span: Span, response: PushBatchResponseInit): void {
  const counts = { pushed: 0, not_connected: 0, stale_route: 0, overloaded: 0 };
  for (const result of response.results ?? []) {
    if (result.outcome === PushOutcome.PUSHED) counts.pushed++;
    else if (result.outcome === PushOutcome.STALE_ROUTE) counts.stale_route++;
    else if (result.outcome === PushOutcome.OVERLOADED) counts.overloaded++;
    else counts.not_connected++;
  }
  for (const [outcome, count] of Object.entries(counts)) span.setAttribute(`parley.push.${outcome}`, count);
}

/**
 * Messages pushed (outcome PUSHED) to a device, for the device's ack: links to sampled traces, and
 * the acceptance time of every message (the ack latency metric counts unsampled messages too, so
 * this runs for every message, not only for sampled ones).
 */
function rememberPushed(memory: PushedMessages, request: PushBatchRequest, response: PushBatchResponseInit) {
  // Usually every device was pushed: only the others are listed.
  let pushedAny = false;
  let notPushed: Set<string> | undefined;
  for (const result of response.results ?? []) {
    if (result.outcome === PushOutcome.PUSHED) pushedAny = true;
    else if (result.device !== undefined) {
      notPushed ??= new Set();
      notPushed.add(`${result.device.userId}/${result.device.deviceId}`);
    }
  }
  if (!pushedAny) return;
  for (const item of request.items) {
    if (item.payload.case !== "message") continue;
    const message = item.payload.value;
    const acceptedAt = message.acceptedAt;
    const remembered = {
      conversationId: message.conversationId,
      messageId: message.messageId,
      seq: message.seq,
      acceptedAtMs:
        acceptedAt === undefined ? undefined : Number(acceptedAt.seconds) * 1000 + acceptedAt.nanos / 1e6,
    };
    const sender = message.sender;
    for (const device of item.devices) {
      if (notPushed?.has(`${device.userId}/${device.deviceId}`) === true) continue;
      // The sending device's echo of its own message: its ack is no delivery to a recipient.
      if (sender !== undefined && sameDevice(sender, device)) continue;
      memory.remember(device, remembered, item.traceparent);
    }
  }
}
