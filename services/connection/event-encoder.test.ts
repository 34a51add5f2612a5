import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { context, TraceFlags, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BlockChangedSchema,
  ConnectionState,
  ContactChangedSchema,
  GroupRenamedSchema,
  MemberChangeKind,
  MemberRole,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import { Topics } from "../../lib/broker/broker.ts";
import { createParleyValidator } from "../../lib/grpc/validation.ts";
import type { StopTelemetry } from "../../lib/telemetry.ts";
import { startTelemetry } from "../../lib/telemetry.ts";
import { activeTraceparent, encodeConnectionEvent } from "./event-encoder.ts";

const AT = new Date("2030-01-01T00:00:00.000Z");
const ID = "0190f5c1-0000-7000-8000-000000000001";
const CONVERSATION = "0190f5c1-0000-7000-8000-0000000000cc";

// The SDK registers the context manager that makes `context.with` reach the encoder.
let stopTelemetry: StopTelemetry;
beforeAll(() => {
  stopTelemetry = startTelemetry({ serviceName: "connection-encoder-test" });
});
afterAll(async () => {
  await stopTelemetry();
});

describe("connection event encoder", () => {
  const validator = createParleyValidator();

  it("encodes MembershipChanged on chat.memberships keyed by conversation, valid by its rules", () => {
    const out = encodeConnectionEvent({
      type: "membership_changed",
      eventId: ID,
      conversationId: CONVERSATION,
      kind: "group",
      version: 4,
      members: [
        { userId: "alice", role: "owner", joinedAt: AT },
        { userId: "bob", role: "member", joinedAt: AT },
      ],
      changes: [{ userId: "carol", kind: "removed", role: undefined }],
      deleted: false,
      changedByUserId: "alice",
      changedAt: AT,
    });
    expect([out.topic, out.key, out.properties]).toEqual([Topics.memberships, CONVERSATION, undefined]);
    const event = fromBinary(MembershipChangedSchema, out.payload);
    expect(validator.validate(MembershipChangedSchema, event).kind).toBe("valid");
    expect(event.version).toBe(4n);
    expect(event.members.map((m) => [m.userId, m.role])).toEqual([
      ["alice", MemberRole.OWNER],
      ["bob", MemberRole.MEMBER],
    ]);
    expect(event.changes.map((c) => [c.userId, c.kind, c.role])).toEqual([
      ["carol", MemberChangeKind.REMOVED, MemberRole.UNSPECIFIED],
    ]);
    expect(event.changedAt && timestampDate(event.changedAt)).toEqual(AT);
  });

  it("keys BlockChanged by blocker/blocked and ContactChanged by the sorted pair", () => {
    const block = encodeConnectionEvent({
      type: "block_changed",
      eventId: ID,
      blockerUserId: "zoe",
      blockedUserId: "amy",
      blocked: true,
      version: 2,
      changedAt: AT,
    });
    expect([block.topic, block.key]).toEqual([Topics.blocks, "zoe/amy"]);
    const blockEvent = fromBinary(BlockChangedSchema, block.payload);
    expect(validator.validate(BlockChangedSchema, blockEvent).kind).toBe("valid");

    const contact = encodeConnectionEvent({
      type: "contact_changed",
      eventId: ID,
      pair: { low: "amy", high: "zoe" },
      version: 2,
      views: [
        {
          userId: "zoe",
          otherUserId: "amy",
          state: "blocked",
          previousState: "accepted",
          bySelf: true,
          conversationId: undefined,
        },
        {
          userId: "amy",
          otherUserId: "zoe",
          state: "none",
          previousState: "accepted",
          bySelf: false,
          conversationId: undefined,
        },
      ],
      changedAt: AT,
    });
    expect([contact.topic, contact.key]).toEqual([Topics.contacts, "amy/zoe"]);
    const contactEvent = fromBinary(ContactChangedSchema, contact.payload);
    expect(validator.validate(ContactChangedSchema, contactEvent).kind).toBe("valid");
    expect(contactEvent.views.map((v) => v.state)).toEqual([ConnectionState.BLOCKED, ConnectionState.NONE]);

    const renamed = encodeConnectionEvent({
      type: "group_renamed",
      eventId: ID,
      conversationId: CONVERSATION,
      name: "new",
      changedByUserId: "amy",
      changedAt: AT,
    });
    expect([renamed.topic, renamed.key]).toEqual([Topics.groups, CONVERSATION]);
    expect(validator.validate(GroupRenamedSchema, fromBinary(GroupRenamedSchema, renamed.payload)).kind).toBe(
      "valid",
    );
  });

  it("carries the active span's traceparent in the event and in the message properties", () => {
    const span = trace.wrapSpanContext({
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      traceFlags: TraceFlags.SAMPLED,
    });
    const expected = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const renamed = () =>
      encodeConnectionEvent({
        type: "group_renamed",
        eventId: ID,
        conversationId: CONVERSATION,
        name: "n",
        changedByUserId: "a",
        changedAt: AT,
      });
    expect(activeTraceparent()).toBe("");
    expect(renamed().properties).toBeUndefined();
    const out = context.with(trace.setSpan(context.active(), span), renamed);
    expect(out.properties).toEqual({ traceparent: expected });
    expect(fromBinary(GroupRenamedSchema, out.payload).traceparent).toBe(expected);
  });
});
