import { beforeEach, describe, expect, it } from "vitest";
import type { TypingChanged } from "../../../gen/parley/events/v1/presence_events_pb.ts";
import { ParleyError } from "../../../lib/errors.ts";
import { createMemoryRateLimiter } from "../../../lib/rate-limit.ts";
import type { ConversationView } from "../../../lib/views/conversation-view.ts";
import type { EphemeralEvents } from "./ports.ts";
import { conversationWorld, ids } from "./test-fixtures.ts";
import { createTyping, TYPING_TTL_MS } from "./typing.ts";

const device = (userId: string, deviceId: string) => ({ userId, deviceId });

let t: number;
let view: ConversationView;
let typed: TypingChanged[];
let events: EphemeralEvents;

beforeEach(() => {
  t = 1_000_000;
  view = conversationWorld();
  typed = [];
  events = { presenceChanged: () => {}, typingChanged: (e) => typed.push(e) };
});

describe("typing", () => {
  it("publishes typing with a 5 s expiry for members, and none for a stop", async () => {
    const setTyping = createTyping({
      conversations: view,
      events,
      limiter: createMemoryRateLimiter({ burst: 10, perSecond: 1 }, { now: () => t }),
      now: () => t,
    });
    expect(await setTyping(device("alice", "phone"), ids.group, true)).toBe(t + TYPING_TTL_MS);
    expect(await setTyping(device("alice", "phone"), ids.group, false)).toBeUndefined();
    expect(
      typed.map((e) => [e.conversationId, e.device?.userId, e.typing, e.expiresAt !== undefined]),
    ).toEqual([
      [ids.group, "alice", true, true],
      [ids.group, "alice", false, false],
    ]);
  });

  it("refuses a non-member as if the conversation did not exist, and too many updates", async () => {
    const setTyping = createTyping({
      conversations: view,
      events,
      limiter: createMemoryRateLimiter({ burst: 2, perSecond: 1 }, { now: () => t }),
      now: () => t,
    });
    await expect(setTyping(device("erin", "phone"), ids.group, true)).rejects.toSatisfy(
      (e: unknown) =>
        e instanceof ParleyError && e.code === "not_found" && e.reason === "CONVERSATION_NOT_FOUND",
    );
    await expect(
      setTyping(device("erin", "phone"), "00000000-0000-7000-8000-00000000ffff", true),
    ).rejects.toSatisfy((e: unknown) => e instanceof ParleyError && e.reason === "CONVERSATION_NOT_FOUND");
    await setTyping(device("bob", "phone"), ids.group, true);
    await setTyping(device("bob", "phone"), ids.group, true);
    await expect(setTyping(device("bob", "phone"), ids.group, true)).rejects.toSatisfy(
      (e: unknown) =>
        e instanceof ParleyError && e.code === "resource_exhausted" && e.reason === "RATE_LIMITED",
    );
    expect(typed).toHaveLength(2);
  });
});
