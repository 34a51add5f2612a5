import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  PresenceChangedSchema,
  PresenceState as PresenceStateProto,
} from "../../../gen/parley/events/v1/presence_events_pb.ts";
import { acceptedContacts } from "./audience.ts";
import type {
  ConversationDirectory,
  DeviceActivity,
  DevicePresence,
  DeviceRef,
  EphemeralEvents,
  PresenceState,
  PresenceStore,
} from "./ports.ts";

export interface PresenceUpdate {
  readonly device: DeviceRef;
  readonly activity: DeviceActivity | "disconnected";
}

export interface UserPresenceView {
  readonly userId: string;
  readonly state: PresenceState;
  /** Now while online or away; the last connection's time when offline; undefined if unknown. */
  readonly lastSeen: number | undefined;
}

export interface PresenceOptions {
  readonly store: PresenceStore;
  readonly events: EphemeralEvents;
  readonly conversations: ConversationDirectory;
  readonly now?: () => number;
}

/**
 * Presence: per-device entries with a TTL (per edge host, so a late disconnect from a host the
 * device left hides nothing), aggregated per user: ONLINE when any live device is active, AWAY when
 * every live device is idle, OFFLINE when none is live. A change of the aggregate state publishes
 * PresenceChanged (ephemeral); a user's record keeps the last state and last seen.
 */
export interface Presence {
  /** Records one host's report; returns when its live devices count as offline unless updated. */
  update(hostId: string, updates: readonly PresenceUpdate[], ttlMs: number): Promise<number>;
  /** Expires devices whose TTL lapsed without a heartbeat; returns how many users changed. */
  sweep(): Promise<number>;
  /** The presence of the users `asking` may see (its user's accepted contacts, and itself), in order. */
  get(asking: DeviceRef, userIds: readonly string[]): Promise<UserPresenceView[]>;
}

export function aggregateState(devices: readonly DevicePresence[]): PresenceState {
  if (devices.some((d) => d.activity === "active")) return "online";
  if (devices.length > 0) return "away";
  return "offline";
}

const STATE_PROTO = {
  online: PresenceStateProto.ONLINE,
  away: PresenceStateProto.AWAY,
  offline: PresenceStateProto.OFFLINE,
} as const;

export function createPresence(options: PresenceOptions): Presence {
  const { store, events, conversations } = options;
  const now = options.now ?? Date.now;
  // One recomputation per user at a time in this process, so two reports racing for the same user
  // publish one change, not two. (Replicas may still race: receivers keep the latest changed_at.)
  const locks = new Map<string, Promise<void>>();

  const withUserLock = async <T>(userId: string, work: () => Promise<T>): Promise<T> => {
    const previous = locks.get(userId) ?? Promise.resolve();
    let release = () => {};
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    const chained = previous.then(() => mine);
    locks.set(userId, chained);
    await previous;
    try {
      return await work();
    } finally {
      release();
      if (locks.get(userId) === chained) locks.delete(userId);
    }
  };

  /** Recomputes a user's aggregate at `t`; `seenAt` is when the user was last known connected. */
  const recompute = (userId: string, t: number, seenAt: number | undefined) =>
    withUserLock(userId, async () => {
      const state = aggregateState(await store.devicesOf(userId, t));
      const previous = await store.userRecord(userId);
      const previousState = previous?.state ?? "offline";
      const lastSeen =
        seenAt === undefined
          ? previous?.lastSeen
          : Math.max(seenAt, previous?.lastSeen ?? Number.NEGATIVE_INFINITY);
      if (state === previousState) {
        if (previous === undefined || lastSeen !== previous.lastSeen) {
          await store.setUserRecord(userId, { state, lastSeen, changedAt: previous?.changedAt ?? t });
        }
        return false;
      }
      await store.setUserRecord(userId, { state, lastSeen, changedAt: t });
      const shownLastSeen = state === "offline" ? lastSeen : t;
      events.presenceChanged(
        create(PresenceChangedSchema, {
          userId,
          state: STATE_PROTO[state],
          ...(shownLastSeen === undefined ? {} : { lastSeen: timestampFromMs(shownLastSeen) }),
          changedAt: timestampFromMs(t),
        }),
      );
      return true;
    });

  return {
    async update(hostId, updates, ttlMs) {
      const t = now();
      const expiresAt = t + ttlMs;
      const live: DevicePresence[] = [];
      for (const update of updates) {
        if (update.activity === "disconnected") {
          await store.remove(update.device, hostId);
        } else {
          live.push({ device: update.device, hostId, activity: update.activity, updatedAt: t, expiresAt });
        }
      }
      if (live.length > 0) await store.upsert(live);
      for (const userId of new Set(updates.map((u) => u.device.userId))) {
        // Every report, a disconnect included, says the user was connected until now.
        await recompute(userId, t, t);
      }
      return expiresAt;
    },

    async sweep() {
      const t = now();
      const expired = await store.takeExpired(t);
      // A device that expired was last seen at its last report, not at the sweep.
      const seenAt = new Map<string, number>();
      for (const entry of expired) {
        const user = entry.device.userId;
        seenAt.set(user, Math.max(seenAt.get(user) ?? 0, entry.updatedAt));
      }
      let changed = 0;
      for (const [userId, at] of seenAt) {
        if (await recompute(userId, t, at)) changed++;
      }
      return changed;
    },

    async get(asking, userIds) {
      const t = now();
      const visible = acceptedContacts(conversations, asking.userId);
      visible.add(asking.userId);
      const answer: UserPresenceView[] = [];
      for (const userId of userIds) {
        if (!visible.has(userId)) continue;
        const state = aggregateState(await store.devicesOf(userId, t));
        const record = await store.userRecord(userId);
        answer.push({ userId, state, lastSeen: state === "offline" ? record?.lastSeen : t });
      }
      return answer;
    },
  };
}
