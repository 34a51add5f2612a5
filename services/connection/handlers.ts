import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type {
  Connection,
  Conversation,
  Member,
  Profile,
} from "../../gen/parley/connection/v1/connection_pb.ts";
import {
  ConnectionSchema,
  ConnectionState,
  ConversationKind,
  ConversationSchema,
  MemberRole,
  MemberSchema,
  ProfileSchema,
} from "../../gen/parley/connection/v1/connection_pb.ts";
import type { ConnectionService } from "../../gen/parley/connection/v1/connection_service_pb.ts";
import type { DeviceIdentity } from "../../gen/parley/key/v1/key_pb.ts";
import { DeviceIdentitySchema } from "../../gen/parley/key/v1/key_pb.ts";
import { invalidArgument } from "../../lib/errors.ts";
import type { GrpcServiceImplementation } from "../../lib/grpc/service-definition.ts";
import type { ConnectionDomain } from "./domain/connection-domain.ts";
import type { DeviceIdentityRecord } from "./domain/device-directory.ts";
import type { ConversationKind as DomainKind, MemberRole as DomainRole, ViewState } from "./domain/model.ts";
import type { ConnectionView, ConversationView, MemberView, ProfileView } from "./domain/views.ts";

type StoredState = Exclude<ViewState, "none">;

const STATE_TO_PROTO: Readonly<Record<StoredState, ConnectionState>> = {
  pending_incoming: ConnectionState.PENDING_INCOMING,
  pending_outgoing: ConnectionState.PENDING_OUTGOING,
  accepted: ConnectionState.ACCEPTED,
  blocked: ConnectionState.BLOCKED,
};

const ROLE_TO_PROTO: Readonly<Record<DomainRole, MemberRole>> = {
  owner: MemberRole.OWNER,
  admin: MemberRole.ADMIN,
  member: MemberRole.MEMBER,
};

function stateFromProto(state: ConnectionState): StoredState {
  switch (state) {
    case ConnectionState.PENDING_INCOMING:
      return "pending_incoming";
    case ConnectionState.PENDING_OUTGOING:
      return "pending_outgoing";
    case ConnectionState.ACCEPTED:
      return "accepted";
    case ConnectionState.BLOCKED:
      return "blocked";
    default:
      // protovalidate refuses these already (defined_only, not_in [0]); this keeps the mapping total.
      throw invalidArgument("VALIDATION_FAILED", `unknown connection state ${state}`);
  }
}

function roleFromProto(role: MemberRole): DomainRole {
  switch (role) {
    case MemberRole.OWNER:
      return "owner";
    case MemberRole.ADMIN:
      return "admin";
    case MemberRole.MEMBER:
      return "member";
    default:
      throw invalidArgument("VALIDATION_FAILED", `unknown member role ${role}`);
  }
}

function kindFromProto(kind: ConversationKind): DomainKind | undefined {
  switch (kind) {
    case ConversationKind.DIRECT:
      return "direct";
    case ConversationKind.GROUP:
      return "group";
    case ConversationKind.UNSPECIFIED:
      return undefined;
    default:
      throw invalidArgument("VALIDATION_FAILED", `unknown conversation kind ${kind}`);
  }
}

function timestamp(date: Date | undefined): Timestamp | undefined {
  return date === undefined ? undefined : timestampFromDate(date);
}

export function toProfile(view: ProfileView): Profile {
  return create(ProfileSchema, {
    userId: view.userId,
    displayName: view.displayName,
    avatarUrl: view.avatarUrl,
    updatedAt: timestamp(view.updatedAt),
  });
}

function toDevice(device: DeviceIdentityRecord): DeviceIdentity {
  return create(DeviceIdentitySchema, {
    deviceId: device.deviceId,
    identityKey: device.identityKey,
    identityKeyCreatedAt: timestamp(device.identityKeyCreatedAt),
    previousIdentityKey: device.previousIdentityKey,
    previousIdentityKeyValidUntil: timestamp(device.previousIdentityKeyValidUntil),
  });
}

export function toConnection(view: ConnectionView): Connection {
  return create(ConnectionSchema, {
    otherUserId: view.otherUserId,
    state: STATE_TO_PROTO[view.state],
    profile: view.profile === undefined ? undefined : toProfile(view.profile),
    conversationId: view.conversationId ?? "",
    devices: view.devices.map(toDevice),
    createdAt: timestampFromDate(view.createdAt),
    updatedAt: timestampFromDate(view.updatedAt),
  });
}

export function toConversation(view: ConversationView): Conversation {
  const { conversation, direct } = view;
  return create(ConversationSchema, {
    conversationId: conversation.conversationId,
    kind:
      direct === undefined
        ? { case: "group", value: { name: conversation.name, ownerUserId: conversation.ownerUserId } }
        : {
            case: "direct",
            value: { otherUserId: direct.otherUserId, otherProfile: toProfile(direct.otherProfile) },
          },
    memberCount: conversation.memberCount,
    role: ROLE_TO_PROTO[view.role],
    membershipVersion: BigInt(conversation.membershipVersion),
    createdAt: timestampFromDate(conversation.createdAt),
    updatedAt: timestampFromDate(conversation.updatedAt),
  });
}

export function toMember(view: MemberView): Member {
  return create(MemberSchema, {
    userId: view.member.userId,
    role: ROLE_TO_PROTO[view.member.role],
    joinedAt: timestampFromDate(view.member.joinedAt),
    profile: toProfile(view.profile),
  });
}

/**
 * The connection service's RPC handlers: protobuf in, domain calls, protobuf out; no I/O of their
 * own. Requests were validated by the gRPC middleware (protovalidate) before they get here.
 */
export function createConnectionHandlers(
  domain: ConnectionDomain,
): GrpcServiceImplementation<typeof ConnectionService> {
  const { contacts, conversations } = domain;
  return {
    async upsertProfile(req) {
      return { profile: toProfile(await contacts.upsertProfile(req.userId, req.displayName, req.avatarUrl)) };
    },
    async getProfile(req) {
      return { profile: toProfile(await contacts.getProfile(req.userId, req.otherUserId)) };
    },
    async listConnections(req) {
      const page = await contacts.listConnections(req.userId, {
        states: req.states.map(stateFromProto),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { connections: page.items.map(toConnection), nextPageToken: page.nextPageToken };
    },
    async requestConnection(req) {
      return { connection: toConnection(await contacts.requestConnection(req.userId, req.otherUserId)) };
    },
    async acceptConnection(req) {
      return { connection: toConnection(await contacts.acceptConnection(req.userId, req.otherUserId)) };
    },
    async rejectConnection(req) {
      await contacts.rejectConnection(req.userId, req.otherUserId);
      return {};
    },
    async blockUser(req) {
      return { connection: toConnection(await contacts.blockUser(req.userId, req.otherUserId)) };
    },
    async unblockUser(req) {
      await contacts.unblockUser(req.userId, req.otherUserId);
      return {};
    },
    async deleteConnection(req) {
      await contacts.deleteConnection(req.userId, req.otherUserId);
      return {};
    },
    async checkBlocks(req) {
      const result = await contacts.checkBlocks(req.userId, req.otherUserIds);
      return { blockedUserIds: [...result.blocked], blockedByUserIds: [...result.blockedBy] };
    },
    async createGroup(req) {
      const view = await conversations.createGroup(req.userId, req.name, req.memberUserIds, req.requestId);
      return { conversation: toConversation(view) };
    },
    async getConversation(req) {
      return {
        conversation: toConversation(await conversations.getConversation(req.userId, req.conversationId)),
      };
    },
    async listConversations(req) {
      const page = await conversations.listConversations(req.userId, {
        kind: kindFromProto(req.kind),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { conversations: page.items.map(toConversation), nextPageToken: page.nextPageToken };
    },
    async listConversationMembers(req) {
      const page = await conversations.listMembers(req.userId, req.conversationId, {
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return {
        members: page.items.map(toMember),
        membershipVersion: BigInt(page.membershipVersion),
        nextPageToken: page.nextPageToken,
      };
    },
    async renameGroup(req) {
      return {
        conversation: toConversation(
          await conversations.renameGroup(req.userId, req.conversationId, req.name),
        ),
      };
    },
    async addGroupMembers(req) {
      const result = await conversations.addMembers(req.userId, req.conversationId, req.memberUserIds);
      return {
        conversation: toConversation(result.conversation),
        addedUserIds: [...result.added],
        alreadyMemberUserIds: [...result.alreadyMembers],
      };
    },
    async removeGroupMembers(req) {
      const result = await conversations.removeMembers(req.userId, req.conversationId, req.memberUserIds);
      return {
        conversation: toConversation(result.conversation),
        removedUserIds: [...result.removed],
        notMemberUserIds: [...result.notMembers],
      };
    },
    async leaveGroup(req) {
      const { leftAt } = await conversations.leaveGroup(req.userId, req.conversationId);
      return { leftAt: timestampFromDate(leftAt) };
    },
    async setMemberRole(req) {
      const result = await conversations.setMemberRole(
        req.userId,
        req.conversationId,
        req.memberUserId,
        roleFromProto(req.role),
      );
      return { conversation: toConversation(result.conversation), member: toMember(result.member) };
    },
  };
}
