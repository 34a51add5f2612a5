import { timestampMs } from "@bufbuild/protobuf/wkt";
import { beforeEach, describe, expect, it } from "vitest";
import type { PresenceChanged } from "../../../gen/parley/events/v1/presence_events_pb.ts";
import { PresenceState } from "../../../gen/parley/events/v1/presence_events_pb.ts";
import type { ConversationView } from "../../../lib/views/conversation-view.ts";
import { createMemoryPresenceStore } from "../adapters/memory/presence-store.ts";
import type { EphemeralEvents } from "./ports.ts";
import type { Presence } from "./presence.ts";
import { createPresence } from "./presence.ts";
import { conversationWorld } from "./test-fixtures.ts";

const TTL = 30_000;
const device = (userId: string, deviceId: string) => ({ userId, deviceId });

let t: number;
let view: ConversationView;
let published: PresenceChanged[];
let events: EphemeralEvents;
let presence: Presence;

beforeEach(() => {
  t = 1_000_000;
  view = conversationWorld();
  published = [];
  events = {
    presenceChanged: (e) => published.push(e),
    typingChanged: () => {},
  };
  presence = createPresence({
    store: createMemoryPresenceStore({ now: () => t }),
    events,
    conversations: view,
    now: () => t,
  });
});

const lastSeenOf = (event: PresenceChanged | undefined) =>
  event?.lastSeen === undefined ? undefined : timestampMs(event.lastSeen);
const states = () => published.map((e) => [e.userId, e.state]);

describe("presence", () => {
  it("publishes a change of the user's aggregate state only: online, away, online, offline", async () => {
    const expires = await presence.update(
      "h1",
      [{ device: device("alice", "phone"), activity: "active" }],
      TTL,
    );
    expect(expires).toBe(t + TTL);
    expect(states()).toEqual([["alice", PresenceState.ONLINE]]);
    expect(lastSeenOf(published[0])).toBe(t);

    // Heartbeats that change nothing publish nothing.
    t += 10_000;
    await presence.update("h1", [{ device: device("alice", "phone"), activity: "active" }], TTL);
    await presence.update("h2", [{ device: device("alice", "laptop"), activity: "idle" }], TTL);
    expect(published).toHaveLength(1);

    // Every live device idle: away.
    t += 1_000;
    await presence.update("h1", [{ device: device("alice", "phone"), activity: "idle" }], TTL);
    expect(states().at(-1)).toEqual(["alice", PresenceState.AWAY]);

    await presence.update("h2", [{ device: device("alice", "laptop"), activity: "active" }], TTL);
    expect(states().at(-1)).toEqual(["alice", PresenceState.ONLINE]);

    t += 1_000;
    const lastConnected = t;
    await presence.update("h1", [{ device: device("alice", "phone"), activity: "disconnected" }], TTL);
    await presence.update("h2", [{ device: device("alice", "laptop"), activity: "disconnected" }], TTL);
    const offline = published.at(-1);
    expect([offline?.userId, offline?.state]).toEqual(["alice", PresenceState.OFFLINE]);
    expect(lastSeenOf(offline)).toBe(lastConnected);
    expect(states()).toHaveLength(4);
  });

  it("keeps presence per (device, host): a late disconnect from the host a device left hides nothing", async () => {
    await presence.update("h1", [{ device: device("bob", "phone"), activity: "active" }], TTL);
    // The device reconnects on h2, then h1 reports its old stream closed.
    await presence.update("h2", [{ device: device("bob", "phone"), activity: "active" }], TTL);
    await presence.update("h1", [{ device: device("bob", "phone"), activity: "disconnected" }], TTL);
    expect(states()).toEqual([["bob", PresenceState.ONLINE]]);
  });

  it("turns a device offline when its TTL lapses without a heartbeat, with last seen at its last report", async () => {
    await presence.update("h1", [{ device: device("carol", "tablet"), activity: "active" }], TTL);
    const lastReport = t + 5_000;
    t = lastReport;
    await presence.update("h1", [{ device: device("carol", "tablet"), activity: "active" }], TTL);

    t = lastReport + TTL - 1;
    expect(await presence.sweep()).toBe(0);
    expect(published).toHaveLength(1);

    t = lastReport + TTL;
    expect(await presence.sweep()).toBe(1);
    const offline = published.at(-1);
    expect([offline?.userId, offline?.state]).toEqual(["carol", PresenceState.OFFLINE]);
    expect(lastSeenOf(offline)).toBe(lastReport);
    expect(await presence.sweep()).toBe(0);
  });

  it("answers GetPresence for the asking user's accepted contacts and itself, in request order; others are left out", async () => {
    await presence.update("h1", [{ device: device("bob", "phone"), activity: "active" }], TTL);
    await presence.update("h2", [{ device: device("dave", "phone"), activity: "active" }], TTL);
    await presence.update("h2", [{ device: device("carol", "tablet"), activity: "idle" }], TTL);
    t += 1_000;
    await presence.update("h2", [{ device: device("carol", "tablet"), activity: "disconnected" }], TTL);
    t += 1_000;

    const answer = await presence.get(device("alice", "phone"), [
      "stranger",
      "carol",
      "dave",
      "bob",
      "alice",
      "erin",
    ]);
    // dave shares only a group with alice; erin and stranger share nothing.
    expect(answer).toEqual([
      { userId: "carol", state: "offline", lastSeen: t - 1_000 },
      { userId: "bob", state: "online", lastSeen: t },
      { userId: "alice", state: "offline", lastSeen: undefined },
    ]);

    // A block hides the blocker from the blocked, and the other way round.
    view.applyBlock({ blocker: "bob", blocked: "alice", isBlocked: true, version: 1n });
    expect((await presence.get(device("alice", "phone"), ["bob"])).map((p) => p.userId)).toEqual([]);
    expect((await presence.get(device("bob", "phone"), ["alice"])).map((p) => p.userId)).toEqual([]);
  });
});
