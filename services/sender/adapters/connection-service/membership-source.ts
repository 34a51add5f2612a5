import type { ConnectionService } from "../../../../gen/parley/connection/v1/connection_service_pb.ts";
import type { GrpcServiceClient } from "../../../../lib/grpc/client.ts";
import { fromGrpcError } from "../../../../lib/grpc/grpc-error.ts";
import type { MembershipSource } from "../../domain/ports.ts";

/**
 * The connection service's GetConversation as the sender's membership source: it answers NOT_FOUND
 * for a conversation that does not exist and for one the user is not a member of, alike.
 */
export function createConnectionMembershipSource(
  connection: GrpcServiceClient<typeof ConnectionService>,
): MembershipSource {
  return {
    async membershipVersion(userId, conversationId) {
      try {
        const response = await connection.getConversation({ userId, conversationId });
        return response.conversation?.membershipVersion;
      } catch (err) {
        if (fromGrpcError(err).code === "not_found") return undefined;
        throw err;
      }
    },
  };
}
