// EdgePushService.PushBatch is validated by a hand-written check (push-batch-check.ts) instead of
// protovalidate. These tests show that every rule of the request still holds, one request per rule,
// and that the check answers exactly as protovalidate does (same code, reason, message, violations
// and order), and they fail when the schema of a hand-checked message changes.
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { create, createRegistry, getOption, hasOption, toJsonString } from "@bufbuild/protobuf";
import {
  FieldRulesSchema,
  field as fieldRules,
  MessageRulesSchema,
  message as messageRules,
  OneofRulesSchema,
  oneof as oneofRules,
  PredefinedRulesSchema,
  predefined as predefinedRules,
} from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Status } from "nice-grpc";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { file_parley_common_v1_rules } from "../gen/parley/common/v1/rules_pb.ts";
import {
  EdgePushService,
  PushBatchRequestSchema,
  PushItemSchema,
} from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { ParleyError } from "../lib/errors.ts";
import type { GrpcServiceClient } from "../lib/grpc/client.ts";
import { closeChannel, createGrpcClient } from "../lib/grpc/client.ts";
import { fromGrpcError } from "../lib/grpc/grpc-error.ts";
import type { GrpcServer } from "../lib/grpc/server.ts";
import { VALIDATION_FAILED, validateMessage } from "../lib/grpc/validation.ts";
import { createLogger } from "../lib/logging.ts";
import { checkPushBatchRequest, isTraceparent } from "./push-batch-check.ts";
import { createPushServer } from "./push-service.ts";
import type { StreamHub } from "./streams/stream-hub.ts";

// Loose shapes: the point is to build requests that break the rules.
type ItemInit = Readonly<Record<string, unknown>>;
type BatchInit = {
  readonly batchId?: string;
  readonly hostId?: string;
  readonly routes?: readonly Readonly<Record<string, unknown>>[];
  readonly items?: readonly ItemInit[];
};
const toRequest = (init: BatchInit) =>
  create(PushBatchRequestSchema, init as MessageInitShape<typeof PushBatchRequestSchema>);

const UUID = "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const alice = { userId: "alice", deviceId: "phone" };
const bob = { userId: "bob", deviceId: "laptop" };
const at = { seconds: 1_800_000_000n, nanos: 0 };

function messageItem(overrides: Partial<ItemInit> = {}, message: Record<string, unknown> = {}): ItemInit {
  return {
    devices: [alice],
    payload: {
      case: "message",
      value: {
        messageId: UUID,
        conversationId: UUID,
        clientMessageId: UUID,
        seq: 7n,
        sender: bob,
        kind: 1,
        ciphertext: new Uint8Array(100),
        acceptedAt: at,
        ...message,
      },
    },
    cursor: new Uint8Array(24),
    traceparent: TRACEPARENT,
    ...overrides,
  } as ItemInit;
}

function receiptItem(receipt: Record<string, unknown> = {}, overrides: Partial<ItemInit> = {}): ItemInit {
  return {
    devices: [alice],
    payload: {
      case: "receipt",
      value: { conversationId: UUID, reader: bob, kind: 1, upToSeq: 7n, messageIds: [UUID], at, ...receipt },
    },
    ...overrides,
  } as ItemInit;
}

function batch(overrides: Partial<BatchInit> = {}): BatchInit {
  return {
    batchId: "batch-1",
    hostId: "edge-1",
    routes: [{ device: alice, routeRevision: 5n }],
    items: [messageItem()],
    ...overrides,
  };
}

/** A valid item of every payload kind, for alice's phone (or bob's devices where a rule asks it). */
const validItems: Record<string, ItemInit> = {
  message: messageItem(),
  receipt: receiptItem(),
  presence: {
    devices: [alice],
    payload: { case: "presence", value: { userId: "bob", state: 1, changedAt: at } },
  } as ItemInit,
  typing: {
    devices: [alice],
    payload: {
      case: "typing",
      value: { conversationId: UUID, device: bob, typing: true, changedAt: at, expiresAt: at },
    },
  } as ItemInit,
  keyChanged: {
    devices: [alice],
    payload: {
      case: "keyChanged",
      value: { eventId: UUID, device: bob, kind: 1, keyVersion: 1n, effectiveAt: at },
    },
  } as ItemInit,
  prekeysLow: {
    devices: [alice],
    payload: {
      case: "prekeysLow",
      value: { eventId: UUID, device: alice, oneTimePrekeyCount: 3, lowWatermark: 10, detectedAt: at },
    },
  } as ItemInit,
  groupRenamed: {
    devices: [alice],
    payload: {
      case: "groupRenamed",
      value: { eventId: UUID, conversationId: UUID, name: "Team", changedByUserId: "bob", changedAt: at },
    },
  } as ItemInit,
};

/** What protovalidate answers, or undefined when the request is valid. */
function protovalidateAnswer(init: BatchInit): ParleyError | undefined {
  try {
    validateMessage(PushBatchRequestSchema, toRequest(init));
    return undefined;
  } catch (err) {
    if (err instanceof ParleyError) return err;
    throw err;
  }
}

/** What the hand-written check answers, or undefined when the request is valid. */
function handAnswer(init: BatchInit): ParleyError | undefined {
  try {
    checkPushBatchRequest(toRequest(init));
    return undefined;
  } catch (err) {
    if (err instanceof ParleyError) return err;
    throw err;
  }
}

function answerOf(err: ParleyError | undefined) {
  return (
    err && {
      code: err.code,
      reason: err.reason,
      message: err.message,
      violations: err.violations,
      metadata: err.metadata,
    }
  );
}

/** Checks the request by hand and with protovalidate: the same answer. Returns the violations. */
function same(init: BatchInit) {
  const hand = handAnswer(init);
  expect(answerOf(hand)).toEqual(answerOf(protovalidateAnswer(init)));
  return hand?.violations.map((v) => `${v.field} ${v.reason}`) ?? [];
}

describe("checkPushBatchRequest", () => {
  it("accepts a valid batch of every payload kind, as protovalidate does", () => {
    for (const [kind, item] of Object.entries(validItems)) {
      expect(same(batch({ items: [item] })), kind).toEqual([]);
    }
    expect(same(batch({ items: Object.values(validItems) }))).toEqual([]);
    // Empty traceparent (not traced), empty cursor, no sender.
    expect(
      same(
        batch({ items: [messageItem({ traceparent: "", cursor: new Uint8Array() }, { sender: undefined })] }),
      ),
    ).toEqual([]);
    // The limits themselves.
    expect(
      same(
        batch({
          batchId: "b".repeat(128),
          hostId: `h${"-".repeat(127)}`,
          routes: Array.from({ length: 5000 }, (_, i) => ({
            device: { userId: `u${i}`, deviceId: "d" },
            routeRevision: 1n,
          })),
          items: Array.from({ length: 1000 }, () =>
            messageItem({ cursor: new Uint8Array(256) }, { ciphertext: new Uint8Array(4096) }),
          ),
        }),
      ),
    ).toEqual([]);
    expect(
      same(batch({ items: [receiptItem({}, { devices: Array.from({ length: 5000 }, () => alice) })] })),
    ).toEqual([]);
    expect(same(batch({ batchId: "é".repeat(128) }))).toEqual([]);
  });

  describe("enforces every rule of PushBatchRequest", () => {
    it.each<[string, BatchInit, string[]]>([
      ["batch_id required", batch({ batchId: "" }), ["batch_id REQUIRED"]],
      ["batch_id max_len 128", batch({ batchId: "b".repeat(129) }), ["batch_id STRING_MAX_LEN"]],
      ["batch_id counts characters", batch({ batchId: "😀".repeat(129) }), ["batch_id STRING_MAX_LEN"]],
      ["host_id required", batch({ hostId: "" }), ["host_id REQUIRED"]],
      ["host_id pattern", batch({ hostId: "-edge" }), ["host_id STRING_PATTERN"]],
      ["host_id pattern (characters)", batch({ hostId: "edge/1" }), ["host_id STRING_PATTERN"]],
      ["host_id pattern (length)", batch({ hostId: "h".repeat(129) }), ["host_id STRING_PATTERN"]],
      ["routes min_items 1", batch({ routes: [] }), ["routes REPEATED_MIN_ITEMS"]],
      [
        "routes max_items 5000",
        batch({ routes: Array.from({ length: 5001 }, () => ({ device: alice, routeRevision: 1n })) }),
        ["routes REPEATED_MAX_ITEMS"],
      ],
      ["items min_items 1", batch({ items: [] }), ["items REPEATED_MIN_ITEMS"]],
      [
        "items max_items 1000",
        batch({ items: Array.from({ length: 1001 }, () => messageItem()) }),
        ["items REPEATED_MAX_ITEMS"],
      ],
    ])("%s", (_name, init, expected) => {
      expect(same(init)).toEqual(expected);
    });
  });

  describe("enforces every rule of DeviceRoute and DeviceAddress", () => {
    it.each<[string, BatchInit, string[]]>([
      ["device required", batch({ routes: [{ routeRevision: 1n }] }), ["routes[0].device REQUIRED"]],
      [
        "route_revision > 0",
        batch({ routes: [{ device: alice, routeRevision: 0n }] }),
        ["routes[0].route_revision INT64_GT"],
      ],
      [
        "route_revision > 0 (negative)",
        batch({ routes: [{ device: alice, routeRevision: -3n }] }),
        ["routes[0].route_revision INT64_GT"],
      ],
      [
        "user_id required",
        batch({ routes: [{ device: { userId: "", deviceId: "phone" }, routeRevision: 1n }] }),
        ["routes[0].device.user_id REQUIRED"],
      ],
      [
        "user_id format",
        batch({ routes: [{ device: { userId: "al ice", deviceId: "phone" }, routeRevision: 1n }] }),
        ["routes[0].device.user_id STRING_USER_ID"],
      ],
      [
        "device_id required",
        batch({ routes: [{ device: { userId: "alice", deviceId: "" }, routeRevision: 1n }] }),
        ["routes[0].device.device_id REQUIRED"],
      ],
      [
        "device_id format ('/' would break the hub's keys)",
        batch({ routes: [{ device: { userId: "alice", deviceId: "a/b" }, routeRevision: 1n }] }),
        ["routes[0].device.device_id STRING_DEVICE_ID"],
      ],
      [
        "device_id at most 64 characters",
        batch({
          routes: [{ device: { userId: "u".repeat(64), deviceId: "d".repeat(65) }, routeRevision: 1n }],
        }),
        ["routes[0].device.device_id STRING_DEVICE_ID"],
      ],
      [
        "an item's devices too",
        batch({ items: [receiptItem({}, { devices: [alice, { userId: "_x", deviceId: "" }] })] }),
        ["items[0].devices[1].user_id STRING_USER_ID", "items[0].devices[1].device_id REQUIRED"],
      ],
    ])("%s", (_name, init, expected) => {
      expect(same(init)).toEqual(expected);
    });
  });

  describe("enforces every rule of PushItem", () => {
    it.each<[string, ItemInit, string[]]>([
      ["devices min_items 1", receiptItem({}, { devices: [] }), ["items[0].devices REPEATED_MIN_ITEMS"]],
      [
        "devices max_items 5000",
        receiptItem({}, { devices: Array.from({ length: 5001 }, () => alice) }),
        ["items[0].devices REPEATED_MAX_ITEMS"],
      ],
      ["payload required", { devices: [alice] } as ItemInit, ["items[0].payload REQUIRED"]],
      ["cursor max_len 256", messageItem({ cursor: new Uint8Array(257) }), ["items[0].cursor BYTES_MAX_LEN"]],
      [
        "traceparent format",
        messageItem({ traceparent: "00-abc" }),
        ["items[0].traceparent STRING_TRACEPARENT"],
      ],
      [
        "traceparent version ff",
        messageItem({ traceparent: `ff${TRACEPARENT.slice(2)}` }),
        ["items[0].traceparent STRING_TRACEPARENT"],
      ],
      [
        "traceparent lowercase",
        messageItem({ traceparent: TRACEPARENT.toUpperCase() }),
        ["items[0].traceparent STRING_TRACEPARENT"],
      ],
      [
        "push_item.message_single_device",
        messageItem({ devices: [alice, bob] }),
        ["items[0] PUSH_ITEM_MESSAGE_SINGLE_DEVICE"],
      ],
      [
        "push_item.prekeys_low_own_device",
        { ...validItems.prekeysLow, devices: [bob] } as ItemInit,
        ["items[0] PUSH_ITEM_PREKEYS_LOW_OWN_DEVICE"],
      ],
      [
        "push_item.prekeys_low_own_device (one device only)",
        { ...validItems.prekeysLow, devices: [alice, alice] } as ItemInit,
        ["items[0] PUSH_ITEM_PREKEYS_LOW_OWN_DEVICE"],
      ],
      [
        "push_item.contact_own_user",
        {
          devices: [alice, bob],
          payload: {
            case: "contact",
            value: {
              eventId: UUID,
              userId: "alice",
              otherUserId: "bob",
              state: 3,
              previousState: 1,
              conversationId: UUID,
              changedAt: at,
            },
          },
        } as ItemInit,
        ["items[0] PUSH_ITEM_CONTACT_OWN_USER"],
      ],
      [
        "push_item.resend_request_sender_device",
        {
          devices: [alice],
          payload: {
            case: "resendRequest",
            value: {
              eventId: UUID,
              conversationId: UUID,
              messageId: UUID,
              sender: bob,
              requester: alice,
              identityKey: new Uint8Array([5, ...new Uint8Array(32)]),
              requestedAt: at,
            },
          },
        } as ItemInit,
        ["items[0] PUSH_ITEM_RESEND_REQUEST_SENDER_DEVICE"],
      ],
      [
        "push_item.cursor_only_for_messages",
        receiptItem({}, { cursor: new Uint8Array(4) }),
        ["items[0] PUSH_ITEM_CURSOR_ONLY_FOR_MESSAGES"],
      ],
    ])("%s", (_name, item, expected) => {
      expect(same(batch({ items: [item] }))).toEqual(expected);
    });

    it("checks the valid contact and resend_request items as protovalidate does", () => {
      expect(
        same(
          batch({
            items: [
              {
                devices: [alice],
                payload: {
                  case: "contact",
                  value: {
                    eventId: UUID,
                    userId: "alice",
                    otherUserId: "bob",
                    state: 3,
                    previousState: 1,
                    conversationId: UUID,
                    changedAt: at,
                  },
                },
              } as ItemInit,
            ],
          }),
        ),
      ).toEqual([]);
    });
  });

  describe("enforces the rules of the payloads", () => {
    it.each<[string, ItemInit, string[]]>([
      [
        "message_id",
        messageItem({}, { messageId: "X" }),
        ["items[0].message.message_id STRING_CANONICAL_UUID"],
      ],
      [
        "message_id empty",
        messageItem({}, { messageId: "" }),
        ["items[0].message.message_id STRING_CANONICAL_UUID"],
      ],
      [
        "conversation_id",
        messageItem({}, { conversationId: UUID.toUpperCase() }),
        ["items[0].message.conversation_id STRING_CANONICAL_UUID"],
      ],
      [
        "client_message_id",
        messageItem({}, { clientMessageId: `${UUID}0` }),
        ["items[0].message.client_message_id STRING_CANONICAL_UUID"],
      ],
      [
        "sender",
        messageItem({}, { sender: { userId: "", deviceId: "x y" } }),
        ["items[0].message.sender.user_id REQUIRED", "items[0].message.sender.device_id STRING_DEVICE_ID"],
      ],
      [
        "ciphertext max_len 4096",
        messageItem({}, { ciphertext: new Uint8Array(4097) }),
        ["items[0].message.ciphertext BYTES_MAX_LEN"],
      ],
      [
        "receipt conversation_id",
        receiptItem({ conversationId: "c" }),
        ["items[0].receipt.conversation_id STRING_CANONICAL_UUID"],
      ],
      [
        "receipt reader",
        receiptItem({ reader: { userId: "bob" } }),
        ["items[0].receipt.reader.device_id REQUIRED"],
      ],
      [
        "receipt message_ids",
        receiptItem({ messageIds: [UUID, "m", UUID, ""] }),
        [
          "items[0].receipt.message_ids[1] STRING_CANONICAL_UUID",
          "items[0].receipt.message_ids[3] STRING_CANONICAL_UUID",
        ],
      ],
      [
        "other payloads: protovalidate on the payload",
        { devices: [alice], payload: { case: "presence", value: {} } } as ItemInit,
        [
          "items[0].presence.user_id REQUIRED",
          "items[0].presence.state ENUM_NOT_IN",
          "items[0].presence.changed_at REQUIRED",
        ],
      ],
      [
        "a payload's own CEL rule",
        {
          devices: [alice],
          payload: {
            case: "contact",
            value: {
              eventId: UUID,
              userId: "alice",
              otherUserId: "bob",
              state: 1,
              previousState: 1,
              changedAt: at,
            },
          },
        } as ItemInit,
        ["items[0].contact CONTACT_VIEW_STATE_CHANGED"],
      ],
    ])("%s", (_name, item, expected) => {
      expect(same(batch({ items: [item] }))).toEqual(expected);
    });
  });

  it("lists violations in protovalidate's order, capped as protovalidate's are", () => {
    const everything = batch({
      batchId: "",
      hostId: "bad host",
      routes: [{ device: { userId: "", deviceId: "a/b" }, routeRevision: 0n }, {}],
      items: [
        { devices: [], cursor: new Uint8Array(257), traceparent: "zz" } as ItemInit,
        messageItem(
          { devices: [alice, bob], traceparent: "x" },
          { messageId: "X", ciphertext: new Uint8Array(5000), sender: { userId: "", deviceId: "" } },
        ),
        receiptItem({ conversationId: "no", messageIds: ["a"] }, { cursor: new Uint8Array(3) }),
        {
          ...validItems.prekeysLow,
          devices: [bob],
          cursor: new Uint8Array(300),
          traceparent: "y",
          payload: { case: "prekeysLow", value: { device: alice } },
        } as ItemInit,
        { devices: [], payload: { case: "resendRequest", value: { sender: bob } } } as ItemInit,
        { devices: [alice], payload: { case: "keyChanged", value: {} }, traceparent: "z" } as ItemInit,
      ],
    });
    same(everything);
    const answer = handAnswer(everything);
    expect(Number(answer?.metadata.violationCount)).toBeGreaterThan(40);
    expect(answer?.violations).toHaveLength(20);
    // And with many bad items: the count of every violation, 20 listed.
    same(batch({ items: Array.from({ length: 1000 }, () => messageItem({}, { messageId: "bad" })) }));
  });

  it("agrees with protovalidate on random breakage", () => {
    // A small deterministic fuzz: each field of a valid batch replaced by one of a few bad values.
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed / 2_147_483_648;
    };
    const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)] as T;
    const ids = ["", "a", "a/b", "a b", "-a", "a".repeat(64), "a".repeat(65), "é"];
    const uuids = ["", UUID, UUID.toUpperCase(), `${UUID}0`, "x"];
    const traces = [
      "",
      TRACEPARENT,
      `ff${TRACEPARENT.slice(2)}`,
      `fe${TRACEPARENT.slice(2)}`,
      TRACEPARENT.slice(1),
      "00",
    ];
    for (let round = 0; round < 300; round++) {
      const items = Array.from({ length: 1 + Math.floor(random() * 3) }, () => {
        const devices = Array.from({ length: Math.floor(random() * 3) }, () => ({
          userId: pick(ids),
          deviceId: pick(ids),
        }));
        const base = pick(Object.values(validItems));
        const item = {
          ...base,
          devices,
          traceparent: pick(traces),
          cursor: new Uint8Array(pick([0, 0, 10, 257])),
        };
        if ((base.payload as { case?: string } | undefined)?.case === "message") {
          return messageItem(item, {
            messageId: pick(uuids),
            conversationId: pick(uuids),
            sender: pick([undefined, alice, { userId: pick(ids), deviceId: pick(ids) }]),
          });
        }
        return item as ItemInit;
      });
      same(
        batch({
          batchId: pick(["", "b", "b".repeat(129)]),
          hostId: pick(ids),
          routes: Array.from({ length: Math.floor(random() * 3) }, () => ({
            device: pick([undefined, alice, { userId: pick(ids), deviceId: pick(ids) }]),
            routeRevision: pick([0n, 1n, -1n]),
          })),
          items,
        }),
      );
    }
  });

  it("reads traceparents as the rule does", () => {
    const rule = /^([0-9a-e][0-9a-f]|f[0-9a-e])-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
    for (const candidate of [
      TRACEPARENT,
      `fe${TRACEPARENT.slice(2)}`,
      `ff${TRACEPARENT.slice(2)}`,
      `${TRACEPARENT}0`,
      TRACEPARENT.replace("-", "_"),
      TRACEPARENT.toUpperCase(),
    ]) {
      expect(isTraceparent(candidate), candidate).toBe(rule.test(candidate));
    }
  });

  it("covers every rule the hand-checked messages have (fails when the schema changes)", () => {
    // If this fails, a rule was added to or changed in a message the check reads by hand: update
    // push-batch-check.ts (and the cases above), then this list.
    const registry = createRegistry(file_parley_common_v1_rules);
    const rules: string[] = [];
    const seen = new Set<string>();
    const visit = (schema: DescMessage) => {
      if (seen.has(schema.typeName)) return;
      seen.add(schema.typeName);
      if (hasOption(schema, messageRules)) {
        rules.push(
          `${schema.typeName} ${toJsonString(MessageRulesSchema, getOption(schema, messageRules), { registry })}`,
        );
      }
      for (const oneof of schema.oneofs) {
        if (hasOption(oneof, oneofRules)) {
          rules.push(
            `${schema.typeName}.${oneof.name} ${toJsonString(OneofRulesSchema, getOption(oneof, oneofRules))}`,
          );
        }
      }
      for (const field of schema.fields) {
        if (hasOption(field, fieldRules)) {
          rules.push(
            `${schema.typeName}.${field.name} ${toJsonString(FieldRulesSchema, getOption(field, fieldRules), { registry })}`,
          );
        }
        // The payloads other than message and receipt go to protovalidate.
        const byProtovalidate =
          schema === PushItemSchema &&
          field.oneof !== undefined &&
          !["message", "receipt"].includes(field.name);
        if (field.message !== undefined && !byProtovalidate) visit(field.message);
      }
    };
    visit(PushBatchRequestSchema);
    for (const extension of file_parley_common_v1_rules.extensions) {
      rules.push(
        `${extension.typeName} ${toJsonString(PredefinedRulesSchema, getOption(extension, predefinedRules))}`,
      );
    }
    expect([...seen].sort()).toEqual([
      "google.protobuf.Timestamp",
      "parley.common.v1.DeviceAddress",
      "parley.common.v1.Message",
      "parley.common.v1.Receipt",
      "parley.delivery.v1.DeviceRoute",
      "parley.delivery.v1.PushBatchRequest",
      "parley.delivery.v1.PushItem",
    ]);
    expect(rules).toMatchInlineSnapshot(`
      [
        "parley.delivery.v1.PushBatchRequest.batch_id {"string":{"maxLen":"128"},"required":true}",
        "parley.delivery.v1.PushBatchRequest.host_id {"string":{"pattern":"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},"required":true}",
        "parley.delivery.v1.PushBatchRequest.routes {"repeated":{"minItems":"1","maxItems":"5000"}}",
        "parley.delivery.v1.DeviceRoute.device {"required":true}",
        "parley.common.v1.DeviceAddress.user_id {"string":{"[parley.common.v1.user_id]":true},"required":true}",
        "parley.common.v1.DeviceAddress.device_id {"string":{"[parley.common.v1.device_id]":true},"required":true}",
        "parley.delivery.v1.DeviceRoute.route_revision {"int64":{"gt":"0"}}",
        "parley.delivery.v1.PushBatchRequest.items {"repeated":{"minItems":"1","maxItems":"1000"}}",
        "parley.delivery.v1.PushItem {"cel":[{"id":"push_item.message_single_device","message":"a message item must address exactly one device","expression":"!has(this.message) || size(this.devices) == 1"},{"id":"push_item.prekeys_low_own_device","message":"a prekeys_low item must address exactly the device it is about","expression":"!has(this.prekeys_low) || (size(this.devices) == 1 && this.devices[0].user_id == this.prekeys_low.device.user_id && this.devices[0].device_id == this.prekeys_low.device.device_id)"},{"id":"push_item.contact_own_user","message":"a contact item must address only devices of the user whose view it is","expression":"!has(this.contact) || this.devices.all(d, d.user_id == this.contact.user_id)"},{"id":"push_item.resend_request_sender_device","message":"a resend_request item must address exactly the message's sending device","expression":"!has(this.resend_request) || (size(this.devices) == 1 && this.devices[0].user_id == this.resend_request.sender.user_id && this.devices[0].device_id == this.resend_request.sender.device_id)"},{"id":"push_item.cursor_only_for_messages","message":"only a message item carries a cursor","expression":"has(this.message) || size(this.cursor) == 0"}]}",
        "parley.delivery.v1.PushItem.payload {"required":true}",
        "parley.delivery.v1.PushItem.devices {"repeated":{"minItems":"1","maxItems":"5000"}}",
        "parley.common.v1.Message.message_id {"string":{"[parley.common.v1.canonical_uuid]":true}}",
        "parley.common.v1.Message.conversation_id {"string":{"[parley.common.v1.canonical_uuid]":true}}",
        "parley.common.v1.Message.client_message_id {"string":{"[parley.common.v1.canonical_uuid]":true}}",
        "parley.common.v1.Message.ciphertext {"bytes":{"maxLen":"4096"}}",
        "parley.common.v1.Receipt.conversation_id {"string":{"[parley.common.v1.canonical_uuid]":true}}",
        "parley.common.v1.Receipt.message_ids {"repeated":{"items":{"string":{"[parley.common.v1.canonical_uuid]":true}}}}",
        "parley.delivery.v1.PushItem.cursor {"bytes":{"maxLen":"256"}}",
        "parley.delivery.v1.PushItem.traceparent {"string":{"[parley.common.v1.traceparent]":true}}",
        "parley.common.v1.user_id {"cel":[{"id":"string.user_id","expression":"!rule || this.matches('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$') ? '' : 'must be a user id: 1 to 64 characters of A-Z, a-z, 0-9, \\\\'_\\\\', \\\\'-\\\\' or \\\\'.\\\\', starting with a letter or digit'"}]}",
        "parley.common.v1.device_id {"cel":[{"id":"string.device_id","expression":"!rule || this.matches('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$') ? '' : 'must be a device id: 1 to 64 characters of A-Z, a-z, 0-9, \\\\'_\\\\', \\\\'-\\\\' or \\\\'.\\\\', starting with a letter or digit'"}]}",
        "parley.common.v1.canonical_uuid {"cel":[{"id":"string.canonical_uuid","expression":"!rule || this.matches('^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') ? '' : 'must be a UUID in canonical lowercase form (8-4-4-4-12 hex digits)'"}]}",
        "parley.common.v1.traceparent {"cel":[{"id":"string.traceparent","expression":"!rule || this == '' || (size(this) <= 55 && this.matches('^([0-9a-e][0-9a-f]|f[0-9a-e])-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$')) ? '' : 'must be empty or a W3C traceparent: <version>-<trace-id>-<parent-id>-<flags>, 2-32-16-2 lowercase hex digits, version not ff'"}]}",
      ]
    `);
  });
});

describe("EdgePushService.PushBatch over gRPC", () => {
  let server: GrpcServer;
  let client: GrpcServiceClient<typeof EdgePushService>;
  const pushed: unknown[] = [];
  beforeAll(async () => {
    const hub = {
      push(request: unknown) {
        pushed.push(request);
        return { results: [], hostState: 1 };
      },
    } as unknown as StreamHub;
    server = createPushServer(hub, createLogger("push-check-test", "silent"));
    const port = await server.listen("127.0.0.1", 0);
    client = createGrpcClient(EdgePushService, `127.0.0.1:${port}`);
  });
  afterAll(async () => {
    closeChannel(client);
    await server.shutdown(100);
  });

  it("refuses a batch that breaks a rule with INVALID_ARGUMENT VALIDATION_FAILED, before the hub sees it", async () => {
    const before = pushed.length;
    let caught: unknown;
    try {
      await client.pushBatch(toRequest(batch({ items: [messageItem({ devices: [alice, bob] })] })));
    } catch (err) {
      caught = err;
    }
    expect((caught as { code?: number }).code).toBe(Status.INVALID_ARGUMENT);
    const err = fromGrpcError(caught);
    expect(err.reason).toBe(VALIDATION_FAILED);
    expect(err.message).toBe(
      "invalid PushBatchRequest: items[0]: a message item must address exactly one device",
    );
    expect(err.violations).toEqual([
      {
        field: "items[0]",
        description: "a message item must address exactly one device",
        reason: "PUSH_ITEM_MESSAGE_SINGLE_DEVICE",
      },
    ]);
    expect(pushed.length).toBe(before);
    await client.pushBatch(toRequest(batch()));
    expect(pushed.length).toBe(before + 1);
  });
});
