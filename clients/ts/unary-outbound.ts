import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { SessionService } from "../../gen/parley/edge/v1/session_service_pb.ts";
import type { Backoff } from "./backoff.ts";
import { isRetryableSendError } from "./client-error.ts";
import type { Clock } from "./clock.ts";
import type { Outbound } from "./outbound.ts";
import { ackBody } from "./outbound.ts";
import { withRetries } from "./retry.ts";

/** Acks are idempotent: a few tries, then the error reaches the caller. */
const ACK_ATTEMPTS = 5;

/**
 * The up direction for browsers (no bidi streams): unary Send, Ack, SetTyping and RequestResend.
 * Send and Ack are idempotent, so both are retried on UNAVAILABLE, RESOURCE_EXHAUSTED and transport
 * failures (Send with the same client_message_id); they do not need the Subscribe stream to be up.
 */
export function createUnaryOutbound(
  session: Client<typeof SessionService>,
  options: { readonly clock: Clock; readonly backoff: Backoff; readonly maxAttempts: number },
): Outbound {
  let lifetime = new AbortController();
  const policy = (attempts: number, signal?: AbortSignal) => {
    const signals = signal === undefined ? [lifetime.signal] : [lifetime.signal, signal];
    return {
      attempts,
      backoff: options.backoff,
      clock: options.clock,
      retryable: isRetryableSendError,
      signal: AbortSignal.any(signals),
    };
  };
  // A call cut short by failAll rejects with failAll's error, not with connect's "canceled".
  const guarded = async <T>(signal: AbortSignal, call: () => Promise<T>): Promise<T> => {
    try {
      return await call();
    } catch (error) {
      throw signal.aborted ? signal.reason : error;
    }
  };
  return {
    async send(message, signal) {
      const retry = policy(options.maxAttempts, signal);
      const response = await guarded(retry.signal, () =>
        withRetries(() => session.send({ message }, { signal: retry.signal }), retry),
      );
      const accepted = response.accepted;
      return {
        messageId: accepted?.messageId ?? "",
        clientMessageId: message.clientMessageId,
        acceptedAt: accepted?.acceptedAt === undefined ? undefined : timestampDate(accepted.acceptedAt),
        duplicate: accepted?.duplicate ?? false,
      };
    },
    async ack(conversationId, kind, target) {
      const retry = policy(ACK_ATTEMPTS);
      const ack = ackBody(conversationId, kind, target);
      await guarded(retry.signal, () =>
        withRetries(() => session.ack({ ack }, { signal: retry.signal }), retry),
      );
    },
    async typing(conversationId, typing) {
      const retry = policy(1);
      await guarded(retry.signal, () =>
        withRetries(
          () => session.setTyping({ typing: { conversationId, typing } }, { signal: retry.signal }),
          retry,
        ),
      );
    },
    async requestResend(request) {
      const retry = policy(1);
      await guarded(retry.signal, () =>
        withRetries(() => session.requestResend({ request }, { signal: retry.signal }), retry),
      );
    },
    failAll(error) {
      lifetime.abort(error);
      lifetime = new AbortController();
    },
  };
}
