import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { FrameError, SendResult } from "../../gen/parley/edge/v1/frames_pb.ts";
import type { Backoff } from "./backoff.ts";
import { ClientReason, errorFromStatus, isRetryableSendError, ParleyClientError } from "./client-error.ts";
import type { Clock, TimerHandle } from "./clock.ts";
import type { ClientFrameBody, Outbound, OutgoingMessageInit, SendOutcome } from "./outbound.ts";
import { ackBody } from "./outbound.ts";
import { retryDelay } from "./retry.ts";

/** Writes a frame on the open Session stream; returns the frame_id it used. */
export type FrameSink = { push(body: ClientFrameBody): bigint };

/** The up direction over Session frames, attached to a stream while one is ready. */
export type FrameOutbound = Outbound & {
  /** Replaces the presence subscription of the open stream (each new stream gets it in its opening frames). */
  presence(userIds: readonly string[]): void;
  attach(sink: FrameSink): void;
  detach(): void;
  onSendResult(result: SendResult): void;
  /** Handles a FrameError; for a frame other than a send, returns that frame's kind for reporting. */
  onFrameError(frameError: FrameError): { frameKind: string; error: ParleyClientError } | undefined;
};

type SendJob = {
  readonly message: OutgoingMessageInit;
  attempts: number;
  frameId: bigint | undefined;
  timer: TimerHandle | undefined;
  readonly resolve: (outcome: SendOutcome) => void;
  readonly reject: (error: unknown) => void;
};

type Waiter = { readonly resolve: () => void; readonly reject: (error: unknown) => void };
/** A frame waiting for a stream; up_to_seq acks of one conversation and kind coalesce (`key`, `seq`). */
type Control = {
  readonly key: string | undefined;
  seq: bigint;
  body: ClientFrameBody;
  readonly waiters: Waiter[];
};

/** How many answered-or-not control frames are remembered to name the frame a FrameError refuses. */
const REMEMBERED_FRAMES = 256;

/**
 * Sends go out as frames and wait for the SendResult with their frame_id. A refusal the contract
 * lets us retry (UNAVAILABLE, RESOURCE_EXHAUSTED) is sent again with the same client_message_id
 * after the server's RetryInfo delay or the jittered backoff; a stream lost before the answer sends
 * it again on the next stream. Acks and resend requests wait for a stream (acks coalesce per
 * conversation and kind); typing updates are dropped when no stream is up (they expire anyway).
 */
export function createFrameOutbound(options: {
  readonly clock: Clock;
  readonly backoff: Backoff;
  readonly maxAttempts: number;
}): FrameOutbound {
  let sink: FrameSink | undefined;
  const jobs = new Set<SendJob>();
  const byFrame = new Map<bigint, SendJob>();
  let controls: Control[] = [];
  const frameKinds = new Map<bigint, string>();

  const settle = (job: SendJob) => {
    jobs.delete(job);
    if (job.frameId !== undefined) {
      byFrame.delete(job.frameId);
    }
    if (job.timer !== undefined) {
      options.clock.clearTimeout(job.timer);
    }
  };

  const transmit = (job: SendJob) => {
    if (sink === undefined || job.timer !== undefined || job.frameId !== undefined || !jobs.has(job)) {
      return;
    }
    job.attempts += 1;
    job.frameId = sink.push({ case: "send", value: job.message });
    byFrame.set(job.frameId, job);
  };

  const retryOrFail = (job: SendJob, error: ParleyClientError) => {
    if (isRetryableSendError(error) && job.attempts < options.maxAttempts) {
      job.timer = options.clock.setTimeout(
        () => {
          job.timer = undefined;
          transmit(job);
        },
        retryDelay(error, options.backoff, job.attempts - 1),
      );
      return;
    }
    settle(job);
    job.reject(error);
  };

  const pushControl = (body: ClientFrameBody) => {
    if (sink === undefined) {
      return false;
    }
    const frameId = sink.push(body);
    frameKinds.set(frameId, body.case ?? "unknown");
    if (frameKinds.size > REMEMBERED_FRAMES) {
      frameKinds.delete(frameKinds.keys().next().value as bigint);
    }
    return true;
  };

  const control = (body: ClientFrameBody, key?: string, seq = 0n) =>
    new Promise<void>((resolve, reject) => {
      if (pushControl(body)) {
        resolve();
        return;
      }
      const queued = key === undefined ? undefined : controls.find((c) => c.key === key);
      if (queued !== undefined) {
        // One up_to_seq ack of a conversation and kind covers the others: keep the highest.
        if (seq > queued.seq) {
          queued.seq = seq;
          queued.body = body;
        }
        queued.waiters.push({ resolve, reject });
        return;
      }
      controls.push({ key, seq, body, waiters: [{ resolve, reject }] });
    });

  return {
    send(message, signal) {
      return new Promise<SendOutcome>((resolve, reject) => {
        if (signal?.aborted) {
          reject(signal.reason);
          return;
        }
        const onAbort = () => {
          settle(job);
          reject(signal?.reason);
        };
        const job: SendJob = {
          message,
          attempts: 0,
          frameId: undefined,
          timer: undefined,
          resolve: (outcome) => {
            signal?.removeEventListener("abort", onAbort);
            resolve(outcome);
          },
          reject: (error) => {
            signal?.removeEventListener("abort", onAbort);
            reject(error);
          },
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        jobs.add(job);
        transmit(job);
      });
    },
    ack(conversationId, kind, target) {
      const body: ClientFrameBody = { case: "ack", value: ackBody(conversationId, kind, target) };
      return "upToSeq" in target ? control(body, `${conversationId}/${kind}`, target.upToSeq) : control(body);
    },
    async typing(conversationId, typing) {
      pushControl({ case: "typing", value: { conversationId, typing } });
    },
    requestResend(request) {
      return control({ case: "resendRequest", value: request });
    },
    presence(userIds) {
      pushControl({ case: "presenceSubscribe", value: { userIds: [...userIds] } });
    },
    failAll(error) {
      for (const job of [...jobs]) {
        settle(job);
        job.reject(error);
      }
      for (const waiter of controls.flatMap((c) => c.waiters)) {
        waiter.reject(error);
      }
      controls = [];
    },
    attach(next) {
      sink = next;
      const queued = controls;
      controls = [];
      for (const c of queued) {
        pushControl(c.body);
        for (const waiter of c.waiters) {
          waiter.resolve();
        }
      }
      for (const job of jobs) {
        transmit(job);
      }
    },
    detach() {
      sink = undefined;
      frameKinds.clear();
      for (const job of byFrame.values()) {
        job.frameId = undefined;
        if (job.attempts >= options.maxAttempts) {
          settle(job);
          job.reject(
            new ParleyClientError(
              Code.Unavailable,
              ClientReason.STREAM_ENDED,
              "the stream ended before the send was answered",
              { transportFailure: true },
            ),
          );
        }
      }
      byFrame.clear();
    },
    onSendResult(result) {
      const job =
        byFrame.get(result.frameId) ??
        [...jobs].find(
          (j) => j.frameId !== undefined && j.message.clientMessageId === result.clientMessageId,
        );
      if (job === undefined) {
        return; // an answer to a send already settled (or from an earlier stream)
      }
      if (job.frameId !== undefined) {
        byFrame.delete(job.frameId);
      }
      job.frameId = undefined;
      if (result.outcome.case === "accepted") {
        const accepted = result.outcome.value;
        settle(job);
        job.resolve({
          messageId: accepted.messageId,
          clientMessageId: job.message.clientMessageId,
          acceptedAt: accepted.acceptedAt === undefined ? undefined : timestampDate(accepted.acceptedAt),
          duplicate: accepted.duplicate,
        });
        return;
      }
      retryOrFail(job, errorFromStatus(result.outcome.case === "error" ? result.outcome.value : undefined));
    },
    onFrameError(frameError) {
      const error = errorFromStatus(frameError.error);
      const job = byFrame.get(frameError.frameId);
      if (job !== undefined) {
        byFrame.delete(frameError.frameId);
        job.frameId = undefined;
        retryOrFail(job, error);
        return undefined;
      }
      const frameKind = frameKinds.get(frameError.frameId) ?? "unknown";
      frameKinds.delete(frameError.frameId);
      return { frameKind, error };
    },
  };
}
