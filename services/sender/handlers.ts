import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { SenderService } from "../../gen/parley/sender/v1/sender_service_pb.ts";
import { invalidArgument } from "../../lib/errors.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import type { SendCommand, SendOutcome } from "./domain/send-message.ts";

/** SenderService over the send use case: protobuf in, domain command, protobuf out. */
export function createSenderHandlers(
  sendMessage: (command: SendCommand) => Promise<SendOutcome>,
): GrpcServiceImplementation<typeof SenderService> {
  return {
    async sendMessage(request) {
      // protovalidate has checked presence already; this narrows the types.
      if (request.sender === undefined || request.envelope === undefined) {
        throw invalidArgument("VALIDATION_FAILED", "sender and envelope are required");
      }
      const outcome = await sendMessage({
        sender: { userId: request.sender.userId, deviceId: request.sender.deviceId },
        conversationId: request.conversationId,
        clientMessageId: request.clientMessageId,
        envelope: request.envelope,
        forceTrace: request.forceTrace,
      });
      return {
        messageId: outcome.messageId,
        acceptedAt: timestampFromDate(outcome.acceptedAt),
        duplicate: outcome.duplicate,
      };
    },
  };
}
