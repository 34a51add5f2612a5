import { createHash } from "node:crypto";
import { invalidArgument } from "../../../lib/errors.ts";
import {
  decodePageToken,
  effectivePageSize,
  encodePageToken,
  invalidPageToken,
  positionInteger,
  positionString,
} from "../../../lib/page-token.ts";
import type { ConversationCommit } from "./connection-store.ts";
import type { ConnectionDomainDeps, ResolvedDeps } from "./deps.ts";
import { resolveDeps, withConflictRetry } from "./deps.ts";
import {
  conversationNotFound,
  groupFull,
  memberNotFound,
  membershipChanged,
  notAConnection,
  notAGroup,
  ownerMustTransfer,
  requestIdReused,
  roleNotAllowed,
} from "./errors.ts";
import type { ConnectionEvent, MemberChange } from "./events.ts";
import type {
  ConversationKind,
  ConversationRecord,
  MemberCursor,
  MemberRecord,
  MemberRole,
  MembershipRecord,
  UserRecord,
} from "./model.ts";
import { compareIds, DEFAULT_PAGE_SIZE, MAX_GROUP_MEMBERS, MAX_PAGE_SIZE } from "./model.ts";
import type { ConversationView, MemberView, Page } from "./views.ts";
import { toProfileView } from "./views.ts";

/** What a group change decided: the new record, member changes, events, and the answer. */
interface GroupChange<T> {
  readonly conversation: ConversationRecord;
  readonly upsertMembers: readonly MemberRecord[];
  readonly removeMemberIds: readonly string[];
  /** Membership changes (they bump the version and publish MembershipChanged). */
  readonly changes: readonly MemberChange[];
  /** Set when the change is a rename (GroupRenamed). */
  readonly renamedTo?: string;
  readonly result: (after: ConversationRecord, members: ReadonlyMap<string, MemberRecord>) => T;
}

/** What a group operation sees when it decides. */
interface GroupContext {
  readonly conversation: ConversationRecord;
  /** Every member now, by user id. */
  readonly members: ReadonlyMap<string, MemberRecord>;
  readonly caller: MemberRecord;
  readonly now: Date;
}

type GroupDecision<T> =
  | { readonly unchanged: T }
  | {
      readonly change: Omit<GroupChange<T>, "conversation"> & { readonly conversation?: ConversationRecord };
    };

/** What AddGroupMembers answers. */
export interface AddResult {
  readonly conversation: ConversationView;
  readonly added: readonly string[];
  readonly alreadyMembers: readonly string[];
}

/** What RemoveGroupMembers answers. */
export interface RemoveResult {
  readonly conversation: ConversationView;
  readonly removed: readonly string[];
  readonly notMembers: readonly string[];
}

const ROLES: readonly MemberRole[] = ["owner", "admin", "member"];

/**
 * Conversations and groups: the rules of connection.v1.ConnectionService for groups (2 to 1,000
 * members, roles, ownership) and for reading conversations, direct ones included.
 *
 * Every change of members or roles increases the conversation's membership version by one and
 * publishes a MembershipChanged snapshot with every member after the change.
 */
export class Conversations {
  readonly #deps: ResolvedDeps;

  constructor(deps: ConnectionDomainDeps) {
    this.#deps = resolveDeps(deps);
  }

  /**
   * Creates a group owned by the caller with the caller and 1 to 999 other members, every one an
   * ACCEPTED connection of the caller. With a request id, a retry returns the first group.
   */
  async createGroup(
    callerId: string,
    name: string,
    memberUserIds: readonly string[],
    requestId: string,
  ): Promise<ConversationView> {
    const { store, clock, newEventId, encodeEvent } = this.#deps;
    const others = [...new Set(memberUserIds)];
    if (others.includes(callerId))
      throw invalidArgument("VALIDATION_FAILED", "member_user_ids must not include the caller");
    const fingerprint = createHash("sha256")
      .update(JSON.stringify([name, [...others].sort()]))
      .digest("base64url");
    if (requestId !== "") {
      const earlier = await store.getGroupRequest(callerId, requestId);
      if (earlier !== undefined) return this.#retriedCreate(callerId, earlier, fingerprint);
    }
    const accepted = new Set(
      (await store.getViews(callerId, others))
        .filter((v) => v.state === "accepted")
        .map((v) => v.otherUserId),
    );
    const missing = others.filter((id) => !accepted.has(id)).sort(compareIds);
    if (missing.length > 0) throw notAConnection(missing);
    if (others.length + 1 > MAX_GROUP_MEMBERS) throw groupFull(1, others.length, MAX_GROUP_MEMBERS);

    const now = clock();
    await store.registerUser(callerId, now);
    const conversationId = this.#deps.newGroupId();
    const members: MemberRecord[] = [
      { conversationId, userId: callerId, role: "owner", joinedAt: now },
      ...others.map((userId) => ({ conversationId, userId, role: "member" as const, joinedAt: now })),
    ];
    const conversation: ConversationRecord = {
      conversationId,
      kind: "group",
      name,
      ownerUserId: callerId,
      directUsers: undefined,
      membershipVersion: 1,
      memberCount: members.length,
      createdAt: now,
      updatedAt: now,
      deleted: false,
    };
    const sorted = [...members].sort((a, b) => compareIds(a.userId, b.userId));
    const event: ConnectionEvent = {
      type: "membership_changed",
      eventId: newEventId(),
      conversationId,
      kind: "group",
      version: 1,
      members: sorted.map((m) => ({ userId: m.userId, role: m.role, joinedAt: m.joinedAt })),
      changes: sorted.map((m) => ({ userId: m.userId, kind: "added", role: m.role })),
      deleted: false,
      changedByUserId: callerId,
      changedAt: now,
    };
    const outcome = await store.createGroup({
      conversation,
      members,
      ...(requestId === "" ? {} : { request: { userId: callerId, requestId, conversationId, fingerprint } }),
      events: [encodeEvent(event)],
    });
    if (!outcome.created) return this.#retriedCreate(callerId, outcome.existing, fingerprint);
    this.#deps.onEventsWritten();
    return { conversation, role: "owner", direct: undefined };
  }

  /** One of the caller's conversations; NOT_FOUND when it does not exist or the caller is not a member. */
  async getConversation(callerId: string, conversationId: string): Promise<ConversationView> {
    const { conversation, member } = await this.#membership(callerId, conversationId);
    const [view] = await this.#conversationViews(callerId, [{ conversation, member }]);
    return view as ConversationView;
  }

  /** The caller's conversations, ordered by conversation id, optionally of one kind. */
  async listConversations(
    callerId: string,
    options: {
      readonly kind: ConversationKind | undefined;
      readonly pageSize: number;
      readonly pageToken: string;
    },
  ): Promise<Page<ConversationView>> {
    const now = this.#deps.clock();
    const scope = [callerId, options.kind ?? ""];
    const after =
      options.pageToken === ""
        ? undefined
        : positionString(decodePageToken(options.pageToken, "conversations", scope, now), 0);
    const limit = effectivePageSize(options.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const rows = await this.#deps.store.listMemberships(callerId, {
      ...(options.kind === undefined ? {} : { kind: options.kind }),
      ...(after === undefined ? {} : { afterConversationId: after }),
      limit: limit + 1,
    });
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      items: await this.#conversationViews(callerId, page),
      nextPageToken:
        rows.length > limit && last !== undefined
          ? encodePageToken("conversations", scope, [last.conversation.conversationId], now)
          : "",
    };
  }

  /**
   * The members of a conversation the caller belongs to: owner, admins, members, each by user id.
   * Pages form one snapshot: a page token carries the membership version of the first page, and
   * a later page read at another version fails with ABORTED.
   */
  async listMembers(
    callerId: string,
    conversationId: string,
    options: { readonly pageSize: number; readonly pageToken: string },
  ): Promise<Page<MemberView> & { readonly membershipVersion: number }> {
    const { store, clock } = this.#deps;
    const now = clock();
    const scope = [callerId, conversationId];
    let after: MemberCursor | undefined;
    let snapshotVersion: number | undefined;
    if (options.pageToken !== "") {
      const position = decodePageToken(options.pageToken, "members", scope, now);
      const role = positionString(position, 0) as MemberRole;
      if (!ROLES.includes(role)) throw invalidPageToken("malformed");
      after = { role, userId: positionString(position, 1) };
      snapshotVersion = positionInteger(position, 2);
    }
    await this.#membership(callerId, conversationId);
    const limit = effectivePageSize(options.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const page = await store.listMembers(conversationId, {
      ...(after === undefined ? {} : { after }),
      limit: limit + 1,
    });
    if (snapshotVersion !== undefined && page.membershipVersion !== snapshotVersion)
      throw membershipChanged();
    const members = page.members.slice(0, limit);
    const users = await store.getUsers(members.map((m) => m.userId));
    const last = members.at(-1);
    return {
      items: members.map((member) => ({
        member,
        profile: toProfileView(member.userId, users.get(member.userId)),
      })),
      membershipVersion: page.membershipVersion,
      nextPageToken:
        page.members.length > limit && last !== undefined
          ? encodePageToken("members", scope, [last.role, last.userId, page.membershipVersion], now)
          : "",
    };
  }

  /** Renames a group (admins and the owner). The same name again changes nothing. */
  async renameGroup(callerId: string, conversationId: string, name: string): Promise<ConversationView> {
    return this.#changeGroup<ConversationView>(callerId, conversationId, ({ conversation, caller, now }) => {
      if (caller.role === "member") throw roleNotAllowed("renaming the group");
      const view = (c: ConversationRecord): ConversationView => ({
        conversation: c,
        role: caller.role,
        direct: undefined,
      });
      if (conversation.name === name) return { unchanged: view(conversation) };
      return {
        change: {
          conversation: { ...conversation, name, updatedAt: now },
          upsertMembers: [],
          removeMemberIds: [],
          changes: [],
          renamedTo: name,
          result: (after) => view(after),
        },
      };
    });
  }

  /**
   * Adds ACCEPTED connections of the caller as MEMBERs (admins and the owner). Users already in
   * the group are left as they are and reported.
   */
  async addMembers(callerId: string, conversationId: string, userIds: readonly string[]): Promise<AddResult> {
    const { store } = this.#deps;
    const requested = [...new Set(userIds)];
    return this.#changeGroup<AddResult>(
      callerId,
      conversationId,
      async ({ conversation, members, caller, now }) => {
        if (caller.role === "member") throw roleNotAllowed("adding members");
        const alreadyMembers = requested.filter((id) => members.has(id));
        const toAdd = requested.filter((id) => !members.has(id));
        const view = (c: ConversationRecord) => ({
          conversation: { conversation: c, role: caller.role, direct: undefined },
          alreadyMembers,
        });
        if (toAdd.length === 0) return { unchanged: { ...view(conversation), added: [] } };
        const accepted = new Set(
          (await store.getViews(callerId, toAdd))
            .filter((v) => v.state === "accepted")
            .map((v) => v.otherUserId),
        );
        const missing = toAdd.filter((id) => !accepted.has(id)).sort(compareIds);
        if (missing.length > 0) throw notAConnection(missing);
        if (members.size + toAdd.length > MAX_GROUP_MEMBERS) {
          throw groupFull(members.size, toAdd.length, MAX_GROUP_MEMBERS);
        }
        return {
          change: {
            upsertMembers: toAdd.map((userId) => ({
              conversationId,
              userId,
              role: "member" as const,
              joinedAt: now,
            })),
            removeMemberIds: [],
            changes: toAdd.map((userId) => ({ userId, kind: "added" as const, role: "member" as const })),
            result: (after) => ({ ...view(after), added: toAdd }),
          },
        };
      },
    );
  }

  /**
   * Removes members (admins remove MEMBERs; the owner removes anyone but themself). Users who are
   * not members are ignored and reported.
   */
  async removeMembers(
    callerId: string,
    conversationId: string,
    userIds: readonly string[],
  ): Promise<RemoveResult> {
    const requested = [...new Set(userIds)];
    if (requested.includes(callerId)) {
      throw invalidArgument(
        "VALIDATION_FAILED",
        "member_user_ids must not include the caller: use LeaveGroup",
      );
    }
    return this.#changeGroup<RemoveResult>(callerId, conversationId, ({ conversation, members, caller }) => {
      if (caller.role === "member") throw roleNotAllowed("removing members");
      const targets = requested.filter((id) => members.has(id));
      const notMembers = requested.filter((id) => !members.has(id));
      if (caller.role === "admin" && targets.some((id) => members.get(id)?.role !== "member")) {
        throw roleNotAllowed("removing admins or the owner");
      }
      const view = (c: ConversationRecord) => ({
        conversation: { conversation: c, role: caller.role, direct: undefined },
        notMembers,
      });
      if (targets.length === 0) return { unchanged: { ...view(conversation), removed: [] } };
      return {
        change: {
          upsertMembers: [],
          removeMemberIds: targets,
          changes: targets.map((userId) => ({ userId, kind: "removed" as const, role: undefined })),
          result: (after) => ({ ...view(after), removed: targets }),
        },
      };
    });
  }

  /**
   * The caller leaves a group. The owner leaves only as the last member, which ends the group;
   * otherwise they must first transfer ownership.
   */
  async leaveGroup(callerId: string, conversationId: string): Promise<{ readonly leftAt: Date }> {
    return this.#changeGroup<{ readonly leftAt: Date }>(
      callerId,
      conversationId,
      ({ conversation, members, caller, now }) => {
        const last = members.size === 1;
        if (caller.role === "owner" && !last) throw ownerMustTransfer();
        return {
          change: {
            // The last member leaving ends the group: nobody can send to it any more.
            conversation: last ? { ...conversation, ownerUserId: "", deleted: true } : conversation,
            upsertMembers: [],
            removeMemberIds: [callerId],
            changes: [{ userId: callerId, kind: "removed", role: undefined }],
            result: () => ({ leftAt: now }),
          },
        };
      },
    );
  }

  /**
   * Changes another member's role. Admins may promote a MEMBER to ADMIN; the owner may set any
   * role, and making someone OWNER transfers ownership (the caller becomes an ADMIN). Setting the
   * role a member already has changes nothing.
   */
  async setMemberRole(
    callerId: string,
    conversationId: string,
    memberUserId: string,
    role: MemberRole,
  ): Promise<{ readonly conversation: ConversationView; readonly member: MemberView }> {
    if (memberUserId === callerId) {
      throw invalidArgument("VALIDATION_FAILED", "member_user_id must not be the caller");
    }
    const result = await this.#changeGroup<{
      readonly conversation: ConversationView;
      readonly member: MemberRecord;
    }>(callerId, conversationId, ({ conversation, members, caller, now }) => {
      if (caller.role === "member") throw roleNotAllowed("changing roles");
      const target = members.get(memberUserId);
      if (target === undefined) throw memberNotFound();
      if (target.role === role) {
        return {
          unchanged: { conversation: { conversation, role: caller.role, direct: undefined }, member: target },
        };
      }
      if (caller.role === "admin" && !(target.role === "member" && role === "admin")) {
        throw roleNotAllowed("this role change: admins may only promote members to admin");
      }
      const updated: MemberRecord = { ...target, role };
      const upsertMembers: MemberRecord[] = [updated];
      const changes: MemberChange[] = [{ userId: memberUserId, kind: "role_changed", role }];
      let next = conversation;
      let callerRole = caller.role;
      if (role === "owner") {
        // Exactly one owner: the transfer demotes the caller to admin in the same change.
        upsertMembers.push({ ...caller, role: "admin" });
        changes.push({ userId: callerId, kind: "role_changed", role: "admin" });
        next = { ...conversation, ownerUserId: memberUserId };
        callerRole = "admin";
      }
      return {
        change: {
          conversation: { ...next, updatedAt: now },
          upsertMembers,
          removeMemberIds: [],
          changes,
          result: (after) => ({
            conversation: { conversation: after, role: callerRole, direct: undefined },
            member: updated,
          }),
        },
      };
    });
    const users = await this.#deps.store.getUsers([memberUserId]);
    return {
      conversation: result.conversation,
      member: { member: result.member, profile: toProfileView(memberUserId, users.get(memberUserId)) },
    };
  }

  /** The conversation and the caller's membership, or NOT_FOUND whether or not it exists. */
  async #membership(callerId: string, conversationId: string): Promise<MembershipRecord> {
    const { store } = this.#deps;
    const [conversation, members] = await Promise.all([
      store.getConversation(conversationId),
      store.getMembers(conversationId, [callerId]),
    ]);
    const member = members[0];
    if (conversation === undefined || conversation.deleted || member === undefined)
      throw conversationNotFound();
    return { conversation, member };
  }

  /**
   * One optimistic round after another until a group change commits: reads the group and all its
   * members, lets `decide` check the rules and describe the change, then commits the change with
   * its events if the membership version did not move meanwhile.
   */
  async #changeGroup<T>(
    callerId: string,
    conversationId: string,
    decide: (context: GroupContext) => GroupDecision<T> | Promise<GroupDecision<T>>,
  ): Promise<T> {
    const { store, encodeEvent, newEventId } = this.#deps;
    return withConflictRetry(async () => {
      const conversation = await store.getConversation(conversationId);
      if (conversation === undefined || conversation.deleted) throw conversationNotFound();
      const all = await store.getAllMembers(conversationId);
      const members = new Map(all.map((m) => [m.userId, m]));
      const caller = members.get(callerId);
      if (caller === undefined) throw conversationNotFound();
      if (conversation.kind !== "group") throw notAGroup();
      const now = this.#deps.clock();
      const decision = await decide({ conversation, members, caller, now });
      if ("unchanged" in decision) return decision.unchanged;
      const change = decision.change;

      const after = new Map(members);
      for (const id of change.removeMemberIds) after.delete(id);
      for (const m of change.upsertMembers) after.set(m.userId, m);
      const membershipChanged = change.changes.length > 0;
      const base = change.conversation ?? conversation;
      const record: ConversationRecord = {
        ...base,
        membershipVersion: conversation.membershipVersion + (membershipChanged ? 1 : 0),
        memberCount: after.size,
        updatedAt: now,
      };
      const events: ConnectionEvent[] = [];
      if (membershipChanged) {
        const sorted = [...after.values()].sort((a, b) => compareIds(a.userId, b.userId));
        events.push({
          type: "membership_changed",
          eventId: newEventId(),
          conversationId,
          kind: "group",
          version: record.membershipVersion,
          members: record.deleted
            ? []
            : sorted.map((m) => ({ userId: m.userId, role: m.role, joinedAt: m.joinedAt })),
          changes: change.changes,
          deleted: record.deleted,
          changedByUserId: callerId,
          changedAt: now,
        });
      }
      if (change.renamedTo !== undefined) {
        events.push({
          type: "group_renamed",
          eventId: newEventId(),
          conversationId,
          name: change.renamedTo,
          changedByUserId: callerId,
          changedAt: now,
        });
      }
      const commit: ConversationCommit = {
        conversation: record,
        expectedVersion: conversation.membershipVersion,
        upsertMembers: change.upsertMembers,
        removeMemberIds: change.removeMemberIds,
        events: events.map(encodeEvent),
      };
      await store.commitConversation(commit);
      if (commit.events.length > 0) this.#deps.onEventsWritten();
      return change.result(record, after);
    });
  }

  /** A retried CreateGroup: the first group if the request is the same, ALREADY_EXISTS otherwise. */
  async #retriedCreate(
    callerId: string,
    earlier: { readonly conversationId: string; readonly fingerprint: string },
    fingerprint: string,
  ): Promise<ConversationView> {
    if (earlier.fingerprint !== fingerprint) throw requestIdReused();
    // The group as it is now; NOT_FOUND if the caller has left it since.
    return this.getConversation(callerId, earlier.conversationId);
  }

  /** Conversations as the caller sees them: for direct ones, the other member and their profile. */
  async #conversationViews(callerId: string, rows: readonly MembershipRecord[]): Promise<ConversationView[]> {
    const otherOf = (c: ConversationRecord) =>
      c.directUsers === undefined
        ? undefined
        : c.directUsers.low === callerId
          ? c.directUsers.high
          : c.directUsers.low;
    const otherIds = rows.flatMap((r) => {
      const other = otherOf(r.conversation);
      return other === undefined ? [] : [other];
    });
    const users: ReadonlyMap<string, UserRecord> =
      otherIds.length > 0 ? await this.#deps.store.getUsers(otherIds) : new Map();
    return rows.map(({ conversation, member }) => {
      const other = otherOf(conversation);
      return {
        conversation,
        role: member.role,
        direct:
          other === undefined
            ? undefined
            : { otherUserId: other, otherProfile: toProfileView(other, users.get(other)) },
      };
    });
  }
}
