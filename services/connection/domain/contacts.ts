import { directConversationId } from "../../../lib/ids.ts";
import type { OutboxEvent } from "../../../lib/outbox.ts";
import {
  decodePageToken,
  effectivePageSize,
  encodePageToken,
  positionString,
} from "../../../lib/page-token.ts";
import type { PairCommit } from "./connection-store.ts";
import type { ConnectionDomainDeps, ResolvedDeps } from "./deps.ts";
import { resolveDeps, withConflictRetry } from "./deps.ts";
import type { DeviceIdentityRecord } from "./device-directory.ts";
import {
  alreadyConnected,
  blockNotFound,
  connectionNotFound,
  rateLimited,
  requestNotFound,
  selfBlock,
  selfConnection,
  userBlocked,
  userNotFound,
} from "./errors.ts";
import type { ConnectionEvent, ContactViewChange } from "./events.ts";
import type {
  ConversationRecord,
  MemberRecord,
  PairRecord,
  UserRecord,
  ViewRecord,
  ViewState,
} from "./model.ts";
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, pairKey, stateOf, viewOf } from "./model.ts";
import type { ConnectionView, Page, ProfileView } from "./views.ts";
import { toProfileView } from "./views.ts";

/** The states a pair moves to: the caller's view and the other user's view after a change. */
interface PairTransition {
  readonly caller: ViewState;
  readonly other: ViewState;
}

/**
 * Profiles, connection requests, connections and blocks: the rules of
 * connection.v1.ConnectionService for everything between two users.
 *
 * Each pair of users has two views (the caller's and the other user's), changed together. The
 * states a pair can be in, as (A's view, B's view):
 * - (none, none): nothing between them;
 * - (pending_outgoing, pending_incoming): A asked B;
 * - (accepted, accepted): connected, with a live direct conversation;
 * - (blocked, none) or (blocked, blocked): A blocked B (and maybe B blocked A). A block is visible
 *   only to the blocker: the blocked user's view is none, exactly as after a deletion.
 */
export class Contacts {
  readonly #deps: ResolvedDeps;

  constructor(deps: ConnectionDomainDeps) {
    this.#deps = resolveDeps(deps);
  }

  /** Sets the caller's profile (which makes the caller a known user). */
  async upsertProfile(userId: string, displayName: string, avatarUrl: string): Promise<ProfileView> {
    const user = await this.#deps.store.upsertProfile({
      userId,
      displayName,
      avatarUrl,
      at: this.#deps.clock(),
    });
    return toProfileView(userId, user);
  }

  /**
   * A user's profile, visible to the user, to their ACCEPTED connections, to users they asked to
   * connect, and to members of a conversation they share. Anything else, including a user who
   * blocked the caller, is NOT_FOUND like an unknown user.
   *
   * Sharing a group keeps the profile visible even across a block: the group's member list shows it
   * anyway, so hiding it here would only tell the blocked user they were blocked.
   */
  async getProfile(callerId: string, otherUserId: string): Promise<ProfileView> {
    const { store } = this.#deps;
    const users = await store.getUsers([otherUserId]);
    const user = users.get(otherUserId);
    if (callerId === otherUserId) return toProfileView(otherUserId, user);
    if (user === undefined) throw userNotFound();
    const [view] = await store.getViews(callerId, [otherUserId]);
    const state = stateOf(view);
    if (state === "accepted" || state === "pending_incoming") return toProfileView(otherUserId, user);
    if (await store.shareConversation(callerId, otherUserId)) return toProfileView(otherUserId, user);
    throw userNotFound();
  }

  /** The caller's connections, ordered by the other user's id, optionally only in some states. */
  async listConnections(
    callerId: string,
    options: {
      readonly states: readonly Exclude<ViewState, "none">[];
      readonly pageSize: number;
      readonly pageToken: string;
    },
  ): Promise<Page<ConnectionView>> {
    const { store, clock } = this.#deps;
    const states = [...new Set(options.states)].sort();
    const scope = [callerId, states];
    const now = clock();
    const after =
      options.pageToken === ""
        ? undefined
        : positionString(decodePageToken(options.pageToken, "connections", scope, now), 0);
    const limit = effectivePageSize(options.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const rows = await store.listViews(callerId, {
      ...(states.length > 0 ? { states } : {}),
      ...(after === undefined ? {} : { afterOtherUserId: after }),
      limit: limit + 1,
    });
    const page = rows.slice(0, limit);
    const items = await this.#connectionViews(callerId, page);
    const last = page.at(-1);
    const nextPageToken =
      rows.length > limit && last !== undefined
        ? encodePageToken("connections", scope, [last.otherUserId], now)
        : "";
    return { items, nextPageToken };
  }

  /**
   * Asks another user to connect. Asking again while pending returns the request unchanged; if the
   * other user had already asked the caller, both are connected at once.
   */
  async requestConnection(callerId: string, otherUserId: string): Promise<ConnectionView> {
    if (callerId === otherUserId) throw selfConnection();
    const { store } = this.#deps;
    const users = await store.getUsers([otherUserId]);
    if (!users.has(otherUserId)) throw userNotFound();
    await store.registerUser(callerId, this.#deps.clock());
    return present(
      await this.#changePair(callerId, otherUserId, async (caller, other) => {
        // The caller's own block first: answering NOT_FOUND here would tell a caller who blocked
        // the other user that they were blocked back.
        if (caller === "blocked") throw userBlocked();
        if (other === "blocked") throw userNotFound();
        if (caller === "accepted") throw alreadyConnected();
        if (caller === "pending_outgoing") return undefined;
        if (caller === "pending_incoming") return { caller: "accepted", other: "accepted" };
        const limit = await this.#deps.requestLimiter.take(callerId);
        if (!limit.allowed) throw rateLimited(limit.retryAfterMs);
        return { caller: "pending_outgoing", other: "pending_incoming" };
      }),
    );
  }

  /** Accepts a pending incoming request; accepting an ACCEPTED connection returns it. */
  async acceptConnection(callerId: string, otherUserId: string): Promise<ConnectionView> {
    await this.#deps.store.registerUser(callerId, this.#deps.clock());
    return present(
      await this.#changePair(callerId, otherUserId, async (caller) => {
        if (caller === "accepted") return undefined;
        if (caller !== "pending_incoming") throw requestNotFound();
        return { caller: "accepted", other: "accepted" };
      }),
    );
  }

  /** Rejects a pending incoming request: it is gone on both sides; the requester may ask again. */
  async rejectConnection(callerId: string, otherUserId: string): Promise<void> {
    await this.#changePair(callerId, otherUserId, async (caller) => {
      if (caller !== "pending_incoming") throw requestNotFound();
      return { caller: "none", other: "none" };
    });
  }

  /**
   * Blocks a user whatever the state: the blocked user's view becomes none (as after a deletion),
   * a direct conversation ends. Shared groups are kept. Blocking again changes nothing.
   */
  async blockUser(callerId: string, otherUserId: string): Promise<ConnectionView> {
    if (callerId === otherUserId) throw selfBlock();
    const { store } = this.#deps;
    const users = await store.getUsers([otherUserId]);
    if (!users.has(otherUserId)) throw userNotFound();
    await store.registerUser(callerId, this.#deps.clock());
    return present(
      await this.#changePair(callerId, otherUserId, async (caller, other) => {
        if (caller === "blocked") return undefined;
        return { caller: "blocked", other: other === "blocked" ? "blocked" : "none" };
      }),
    );
  }

  /**
   * Lifts a block. The users are then not connected at all (restoring the former connection would
   * tell the blocked user they had been blocked). A block the other user holds stays.
   */
  async unblockUser(callerId: string, otherUserId: string): Promise<void> {
    await this.#changePair(callerId, otherUserId, async (caller, other) => {
      if (caller !== "blocked") throw blockNotFound();
      return { caller: "none", other };
    });
  }

  /** Deletes a connection on both sides: a request either way, or an ACCEPTED connection. */
  async deleteConnection(callerId: string, otherUserId: string): Promise<void> {
    await this.#changePair(callerId, otherUserId, async (caller) => {
      if (caller === "blocked") throw userBlocked();
      if (caller === "none") throw connectionNotFound();
      return { caller: "none", other: "none" };
    });
  }

  /** Which of `otherUserIds` the caller blocked, and which blocked the caller (request order). */
  async checkBlocks(
    callerId: string,
    otherUserIds: readonly string[],
  ): Promise<{ readonly blocked: readonly string[]; readonly blockedBy: readonly string[] }> {
    const { store } = this.#deps;
    const others = otherUserIds.filter((id) => id !== callerId);
    if (others.length === 0) return { blocked: [], blockedBy: [] };
    const [mine, theirs] = await Promise.all([
      store.getViews(callerId, others),
      store.getViewsTowards(others, callerId),
    ]);
    const blocked = new Set(mine.filter((v) => v.state === "blocked").map((v) => v.otherUserId));
    const blockedBy = new Set(theirs.filter((v) => v.state === "blocked").map((v) => v.userId));
    return {
      blocked: others.filter((id) => blocked.has(id)),
      blockedBy: others.filter((id) => blockedBy.has(id)),
    };
  }

  /**
   * One optimistic round after another until a pair change commits. `decide` sees the caller's
   * and the other user's states and returns the states after the change, undefined for no change,
   * or throws the error to answer. Returns the caller's view after the change.
   */
  async #changePair(
    callerId: string,
    otherUserId: string,
    decide: (caller: ViewState, other: ViewState, now: Date) => Promise<PairTransition | undefined>,
  ): Promise<ConnectionView | undefined> {
    const { store } = this.#deps;
    const key = pairKey(callerId, otherUserId);
    const after = await withConflictRetry(async () => {
      const pair = await store.getPair(key);
      const now = this.#deps.clock();
      const transition = await decide(
        stateOf(viewOf(pair, callerId)),
        stateOf(viewOf(pair, otherUserId)),
        now,
      );
      if (transition === undefined) return viewOf(pair, callerId);
      const commit = await this.#pairCommit(pair, callerId, otherUserId, transition, now);
      await store.commitPair(commit);
      if (commit.events.length > 0) this.#deps.onEventsWritten();
      return viewOf({ ...pair, lowView: commit.lowView, highView: commit.highView }, callerId);
    });
    // The caller's view is none after a reject, delete or unblock: nothing to show.
    if (after === undefined) return undefined;
    const [view] = await this.#connectionViews(callerId, [after], { afterCommit: true });
    return view;
  }

  /** Everything a pair change writes: both views, the version, the direct conversation, the events. */
  async #pairCommit(
    pair: PairRecord,
    callerId: string,
    otherUserId: string,
    transition: PairTransition,
    now: Date,
  ): Promise<PairCommit> {
    const { newEventId, encodeEvent } = this.#deps;
    const version = pair.version + 1;
    const before = { [callerId]: viewOf(pair, callerId), [otherUserId]: viewOf(pair, otherUserId) };
    const nextView = (userId: string, other: string, state: ViewState): ViewRecord | undefined => {
      const previous = before[userId];
      if (state === "none") return undefined;
      if (previous?.state === state) return previous;
      // created_at is when the connection was first requested (or blocked): kept across changes.
      return { userId, otherUserId: other, state, createdAt: previous?.createdAt ?? now, updatedAt: now };
    };
    const after = {
      [callerId]: nextView(callerId, otherUserId, transition.caller),
      [otherUserId]: nextView(otherUserId, callerId, transition.other),
    };
    const conversationId = directConversationId(callerId, otherUserId);
    const events: ConnectionEvent[] = [];

    // Blocks, for enforcement (sender): only the side whose blocking changed.
    for (const [userId, other] of [
      [callerId, otherUserId],
      [otherUserId, callerId],
    ] as const) {
      const was = stateOf(before[userId]) === "blocked";
      const is = stateOf(after[userId]) === "blocked";
      if (was !== is) {
        events.push({
          type: "block_changed",
          eventId: newEventId(),
          blockerUserId: userId,
          blockedUserId: other,
          blocked: is,
          version,
          changedAt: now,
        });
      }
    }

    // The direct conversation lives exactly while both views are accepted.
    const wasConnected =
      stateOf(before[callerId]) === "accepted" && stateOf(before[otherUserId]) === "accepted";
    const isConnected = transition.caller === "accepted" && transition.other === "accepted";
    let direct: PairCommit["direct"];
    if (wasConnected !== isConnected) {
      const existing = await this.#deps.store.getConversation(conversationId);
      const membershipVersion = (existing?.membershipVersion ?? 0) + 1;
      const conversation: ConversationRecord = {
        conversationId,
        kind: "direct",
        name: "",
        ownerUserId: "",
        directUsers: pair.pair,
        membershipVersion,
        memberCount: isConnected ? 2 : 0,
        createdAt: isConnected ? now : (existing?.createdAt ?? now),
        updatedAt: now,
        deleted: !isConnected,
      };
      const members: MemberRecord[] = isConnected
        ? [pair.pair.low, pair.pair.high].map((userId) => ({
            conversationId,
            userId,
            role: "member",
            joinedAt: now,
          }))
        : [];
      direct = { conversation, members };
      events.push({
        type: "membership_changed",
        eventId: newEventId(),
        conversationId,
        kind: "direct",
        version: membershipVersion,
        members: members.map((m) => ({ userId: m.userId, role: m.role, joinedAt: m.joinedAt })),
        changes: [pair.pair.low, pair.pair.high].map((userId) =>
          isConnected
            ? { userId, kind: "added" as const, role: "member" as const }
            : { userId, kind: "removed" as const, role: undefined },
        ),
        deleted: !isConnected,
        changedByUserId: callerId,
        changedAt: now,
      });
    }

    // Each user's view, for their devices: only views whose state changed.
    const views: ContactViewChange[] = [];
    for (const [userId, other] of [
      [callerId, otherUserId],
      [otherUserId, callerId],
    ] as const) {
      const previousState = stateOf(before[userId]);
      const state = stateOf(after[userId]);
      if (previousState !== state) {
        views.push({
          userId,
          otherUserId: other,
          state,
          previousState,
          bySelf: userId === callerId,
          conversationId: state === "accepted" ? conversationId : undefined,
        });
      }
    }
    if (views.length > 0) {
      events.push({
        type: "contact_changed",
        eventId: newEventId(),
        pair: pair.pair,
        version,
        views,
        changedAt: now,
      });
    }

    const encoded: OutboxEvent[] = events.map(encodeEvent);
    return {
      pair: pair.pair,
      expectedVersion: pair.version,
      version,
      lowView: after[pair.pair.low],
      highView: after[pair.pair.high],
      ...(direct === undefined ? {} : { direct }),
      events: encoded,
    };
  }

  /** Views as the caller sees them: profiles where visible, devices of ACCEPTED connections. */
  async #connectionViews(
    callerId: string,
    rows: readonly ViewRecord[],
    options: { readonly afterCommit?: boolean } = {},
  ): Promise<ConnectionView[]> {
    const showsProfile = (v: ViewRecord) => v.state === "accepted" || v.state === "pending_incoming";
    const profileIds = rows.filter(showsProfile).map((v) => v.otherUserId);
    const acceptedIds = rows.filter((v) => v.state === "accepted").map((v) => v.otherUserId);
    const [users, devices] = await Promise.all([
      profileIds.length > 0 ? this.#deps.store.getUsers(profileIds) : new Map<string, UserRecord>(),
      acceptedIds.length > 0
        ? this.#deps.devices.identityKeys(callerId, acceptedIds).catch((err: unknown) => {
            // After a committed change the answer must not turn into an error (a retry would then
            // see ALREADY_CONNECTED): show no devices, which the client fetches from the key
            // service anyway before its first message. A listing fails instead.
            if (!options.afterCommit) throw err;
            this.#deps.reportError(err, "devices of a new connection are unavailable");
            return new Map<string, readonly DeviceIdentityRecord[]>();
          })
        : new Map<string, readonly DeviceIdentityRecord[]>(),
    ]);
    return rows.map((v) => ({
      otherUserId: v.otherUserId,
      state: v.state,
      profile: showsProfile(v) ? toProfileView(v.otherUserId, users.get(v.otherUserId)) : undefined,
      conversationId: v.state === "accepted" ? directConversationId(callerId, v.otherUserId) : undefined,
      devices: v.state === "accepted" ? (devices.get(v.otherUserId) ?? []) : [],
      createdAt: v.createdAt,
      updatedAt: v.updatedAt,
    }));
  }
}

/** The caller's view after a change that leaves one (request, accept, block). */
function present(view: ConnectionView | undefined): ConnectionView {
  if (view === undefined) throw new Error("the change left the caller without a view");
  return view;
}
