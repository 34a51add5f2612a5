import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ReceiptKind } from "../../gen/parley/common/v1/message_pb.ts";
import type {
  ClientFrameSchema,
  OutgoingMessageSchema,
  ResendRequestSchema,
} from "../../gen/parley/edge/v1/frames_pb.ts";

/** An OutgoingMessage with its client_message_id chosen. */
export type OutgoingMessageInit = MessageInitShape<typeof OutgoingMessageSchema> & {
  readonly clientMessageId: string;
};

/** A send the server accepted. */
export type SendOutcome = {
  /** Server-assigned (UUIDv7), the same on every retry. */
  readonly messageId: string;
  /** The idempotency key the send used (generated when the app gave none). */
  readonly clientMessageId: string;
  /** When the message was first accepted. */
  readonly acceptedAt: Date | undefined;
  /** True when the server had already accepted this client_message_id (a retry). */
  readonly duplicate: boolean;
};

/** Which messages of a conversation an acknowledgement covers. */
export type AckTarget = { readonly upToSeq: bigint } | { readonly messageIds: readonly string[] };

export type ResendRequestInit = MessageInitShape<typeof ResendRequestSchema>;

/** The body of a ClientFrame (the frame_id is the sink's to choose). */
export type ClientFrameBody = NonNullable<MessageInitShape<typeof ClientFrameSchema>["body"]>;

/** The up direction of a session, over Session frames or unary calls. */
export type Outbound = {
  /** Resolves when accepted; retries UNAVAILABLE/RESOURCE_EXHAUSTED and lost streams with the same client_message_id. */
  send(message: OutgoingMessageInit, signal?: AbortSignal): Promise<SendOutcome>;
  ack(conversationId: string, kind: ReceiptKind, target: AckTarget): Promise<void>;
  typing(conversationId: string, typing: boolean): Promise<void>;
  requestResend(request: ResendRequestInit): Promise<void>;
  /** Rejects everything pending with `error` (the client closed, or another stream replaced it). */
  failAll(error: Error): void;
};

export function ackBody(conversationId: string, kind: ReceiptKind, target: AckTarget) {
  return {
    conversationId,
    kind,
    target:
      "upToSeq" in target
        ? { case: "upToSeq" as const, value: target.upToSeq }
        : { case: "messageIds" as const, value: { messageIds: [...target.messageIds] } },
  };
}
