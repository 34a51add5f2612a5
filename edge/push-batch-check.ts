import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import type { Validator } from "@bufbuild/protovalidate";
import type { DeviceAddress } from "../gen/parley/common/v1/address_pb.ts";
import type { Message, Receipt } from "../gen/parley/common/v1/message_pb.ts";
import type { PushBatchRequest, PushItem } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { PushBatchRequestSchema, PushItemSchema } from "../gen/parley/delivery/v1/edge_push_service_pb.ts";
import type { FieldViolation } from "../lib/errors.ts";
import { ParleyError } from "../lib/errors.ts";
import { createParleyValidator, isCanonicalUuid, validationFailure } from "../lib/grpc/validation.ts";

/**
 * EdgePushService.PushBatch's request check, in place of protovalidate's generic evaluation
 * (`grpcService(..., { pushBatch: checkPushBatchRequest })`): a 1,000-item batch ran five CEL
 * programs and a dozen field rules per item, one of the largest costs of the edge's push path
 * (bench/README.md). Every rule of the request is still enforced, with the same answer
 * protovalidate gives (INVALID_ARGUMENT, VALIDATION_FAILED, the same field paths, rule ids as
 * reasons and messages, in the same order):
 *
 * - by hand: every rule of PushBatchRequest, DeviceRoute and PushItem (edge_push_service.proto,
 *   its five CEL rules included), of DeviceAddress (the hub keys streams by `user/device`, which
 *   relies on the id format) and of the two payloads that make the traffic, Message and Receipt;
 * - by protovalidate, on the payload alone: the other payloads (presence, typing, key changes,
 *   prekeys low, contact and membership changes, renames, resend requests), which are rare.
 *
 * push-batch-check.test.ts compares the two on requests that break each rule, and fails when a
 * rule is added to or changed in one of the hand-checked messages, so the check cannot drift from
 * the schema silently.
 */
export function checkPushBatchRequest(
  request: PushBatchRequest,
  validator: Validator = payloadValidator(),
): void {
  const violations: FieldViolation[] = [];
  checkBatch(request, violations, validator);
  if (violations.length > 0) throw validationFailure(PushBatchRequestSchema, violations);
}

let shared: Validator | undefined;
function payloadValidator(): Validator {
  shared ??= createParleyValidator();
  return shared;
}

// The rules' messages and ids as protovalidate reports them (buf/validate/validate.proto and
// parley/common/v1/rules.proto).
const REQUIRED = { reason: "REQUIRED", description: "value is required" };
const ONEOF_REQUIRED = { reason: "REQUIRED", description: "exactly one field is required in oneof" };
const HOST_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$";
const RULES = {
  batchIdMaxLen: { reason: "STRING_MAX_LEN", description: "must be at most 128 characters" },
  hostIdPattern: {
    reason: "STRING_PATTERN",
    description: `does not match regex pattern \`${HOST_ID_PATTERN}\``,
  },
  routesMin: { reason: "REPEATED_MIN_ITEMS", description: "must contain at least 1 item(s)" },
  routesMax: { reason: "REPEATED_MAX_ITEMS", description: "must contain no more than 5000 item(s)" },
  itemsMin: { reason: "REPEATED_MIN_ITEMS", description: "must contain at least 1 item(s)" },
  itemsMax: { reason: "REPEATED_MAX_ITEMS", description: "must contain no more than 1000 item(s)" },
  devicesMin: { reason: "REPEATED_MIN_ITEMS", description: "must contain at least 1 item(s)" },
  devicesMax: { reason: "REPEATED_MAX_ITEMS", description: "must contain no more than 5000 item(s)" },
  revisionGt: { reason: "INT64_GT", description: "must be greater than 0" },
  cursorMaxLen: { reason: "BYTES_MAX_LEN", description: "must be at most 256 bytes" },
  ciphertextMaxLen: { reason: "BYTES_MAX_LEN", description: "must be at most 4096 bytes" },
  userId: {
    reason: "STRING_USER_ID",
    description:
      "must be a user id: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.', starting with a letter or digit",
  },
  deviceId: {
    reason: "STRING_DEVICE_ID",
    description:
      "must be a device id: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.', starting with a letter or digit",
  },
  uuid: {
    reason: "STRING_CANONICAL_UUID",
    description: "must be a UUID in canonical lowercase form (8-4-4-4-12 hex digits)",
  },
  traceparent: {
    reason: "STRING_TRACEPARENT",
    description:
      "must be empty or a W3C traceparent: <version>-<trace-id>-<parent-id>-<flags>, 2-32-16-2 lowercase hex digits, version not ff",
  },
  messageSingleDevice: {
    reason: "PUSH_ITEM_MESSAGE_SINGLE_DEVICE",
    description: "a message item must address exactly one device",
  },
  prekeysLowOwnDevice: {
    reason: "PUSH_ITEM_PREKEYS_LOW_OWN_DEVICE",
    description: "a prekeys_low item must address exactly the device it is about",
  },
  contactOwnUser: {
    reason: "PUSH_ITEM_CONTACT_OWN_USER",
    description: "a contact item must address only devices of the user whose view it is",
  },
  resendRequestSenderDevice: {
    reason: "PUSH_ITEM_RESEND_REQUEST_SENDER_DEVICE",
    description: "a resend_request item must address exactly the message's sending device",
  },
  cursorOnlyForMessages: {
    reason: "PUSH_ITEM_CURSOR_ONLY_FOR_MESSAGES",
    description: "only a message item carries a cursor",
  },
} as const;

type Rule = { readonly reason: string; readonly description: string };

function add(violations: FieldViolation[], field: string, rule: Rule): void {
  violations.push({ field, description: rule.description, reason: rule.reason });
}

function checkBatch(request: PushBatchRequest, violations: FieldViolation[], validator: Validator): void {
  // batch_id: required, max_len 128 (characters, i.e. code points).
  if (request.batchId === "") add(violations, "batch_id", REQUIRED);
  else if (characters(request.batchId) > 128) add(violations, "batch_id", RULES.batchIdMaxLen);
  // host_id: required, pattern.
  if (request.hostId === "") add(violations, "host_id", REQUIRED);
  else if (!isHostId(request.hostId)) add(violations, "host_id", RULES.hostIdPattern);
  // routes: 1..5000, each a DeviceRoute.
  const routes = request.routes;
  if (routes.length < 1) add(violations, "routes", RULES.routesMin);
  else if (routes.length > 5000) add(violations, "routes", RULES.routesMax);
  for (let i = 0; i < routes.length; i++) {
    const route = routes[i];
    if (route === undefined) continue;
    if (route.device === undefined) add(violations, `routes[${i}].device`, REQUIRED);
    else checkDeviceAddress(route.device, `routes[${i}].device`, violations);
    if (!(route.routeRevision > 0n)) add(violations, `routes[${i}].route_revision`, RULES.revisionGt);
  }
  // items: 1..1000, each a PushItem.
  const items = request.items;
  if (items.length < 1) add(violations, "items", RULES.itemsMin);
  else if (items.length > 1000) add(violations, "items", RULES.itemsMax);
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    if (item !== undefined) checkItem(item, `items[${i}]`, violations, validator);
  }
}

function checkItem(item: PushItem, at: string, violations: FieldViolation[], validator: Validator): void {
  const devices = item.devices;
  // Fields in declaration order, as protovalidate visits them: devices, the payload oneof's
  // member, cursor, traceparent; then the message's CEL rules; then the oneof's `required`.
  if (devices.length < 1) add(violations, `${at}.devices`, RULES.devicesMin);
  else if (devices.length > 5000) add(violations, `${at}.devices`, RULES.devicesMax);
  for (let j = 0; j < devices.length; j++) {
    const device = devices[j];
    if (device !== undefined) checkDeviceAddress(device, `${at}.devices[${j}]`, violations);
  }
  const payload = item.payload;
  switch (payload.case) {
    case "message":
      checkMessage(payload.value, `${at}.message`, violations);
      break;
    case "receipt":
      checkReceipt(payload.value, `${at}.receipt`, violations);
      break;
    case undefined:
      break;
    default:
      checkByProtovalidate(payload.case, payload.value, at, violations, validator);
  }
  if (item.cursor.length > 256) add(violations, `${at}.cursor`, RULES.cursorMaxLen);
  if (item.traceparent !== "" && !isTraceparent(item.traceparent)) {
    add(violations, `${at}.traceparent`, RULES.traceparent);
  }

  // The CEL rules of PushItem (edge_push_service.proto), in their order.
  const only = devices.length === 1 ? devices[0] : undefined;
  if (payload.case === "message" && devices.length !== 1) add(violations, at, RULES.messageSingleDevice);
  if (payload.case === "prekeysLow" && !isExactly(only, payload.value.device)) {
    add(violations, at, RULES.prekeysLowOwnDevice);
  }
  if (payload.case === "contact") {
    const userId = payload.value.userId;
    if (!devices.every((d) => d.userId === userId)) add(violations, at, RULES.contactOwnUser);
  }
  if (payload.case === "resendRequest" && !isExactly(only, payload.value.sender)) {
    add(violations, at, RULES.resendRequestSenderDevice);
  }
  if (payload.case !== "message" && item.cursor.length !== 0)
    add(violations, at, RULES.cursorOnlyForMessages);

  if (payload.case === undefined) add(violations, `${at}.payload`, ONEOF_REQUIRED);
}

/** CEL reads an unset message field's fields as their defaults (""). */
function isExactly(device: DeviceAddress | undefined, expected: DeviceAddress | undefined): boolean {
  return (
    device !== undefined &&
    device.userId === (expected?.userId ?? "") &&
    device.deviceId === (expected?.deviceId ?? "")
  );
}

function checkDeviceAddress(device: DeviceAddress, at: string, violations: FieldViolation[]): void {
  // `required` on a proto3 string: the empty string breaks it, and then only it is reported.
  if (device.userId === "") add(violations, `${at}.user_id`, REQUIRED);
  else if (!isLocalId(device.userId)) add(violations, `${at}.user_id`, RULES.userId);
  if (device.deviceId === "") add(violations, `${at}.device_id`, REQUIRED);
  else if (!isLocalId(device.deviceId)) add(violations, `${at}.device_id`, RULES.deviceId);
}

/** parley.common.v1.Message. */
function checkMessage(message: Message, at: string, violations: FieldViolation[]) {
  if (!isCanonicalUuid(message.messageId)) add(violations, `${at}.message_id`, RULES.uuid);
  if (!isCanonicalUuid(message.conversationId)) add(violations, `${at}.conversation_id`, RULES.uuid);
  if (message.sender !== undefined) checkDeviceAddress(message.sender, `${at}.sender`, violations);
  if (!isCanonicalUuid(message.clientMessageId)) add(violations, `${at}.client_message_id`, RULES.uuid);
  if (message.ciphertext.length > 4096) add(violations, `${at}.ciphertext`, RULES.ciphertextMaxLen);
}

/** parley.common.v1.Receipt. */
function checkReceipt(receipt: Receipt, at: string, violations: FieldViolation[]) {
  if (!isCanonicalUuid(receipt.conversationId)) add(violations, `${at}.conversation_id`, RULES.uuid);
  if (receipt.reader !== undefined) checkDeviceAddress(receipt.reader, `${at}.reader`, violations);
  const ids = receipt.messageIds;
  for (let k = 0; k < ids.length; k++) {
    if (!isCanonicalUuid(ids[k] as string)) add(violations, `${at}.message_ids[${k}]`, RULES.uuid);
  }
}

type OtherCase = Exclude<PushItem["payload"]["case"], "message" | "receipt" | undefined>;

/** The payload's schema and its field name in PushItem, by oneof case. */
const PAYLOAD_FIELDS = new Map<string, { readonly name: string; readonly schema: DescMessage }>(
  PushItemSchema.fields.flatMap((f) =>
    f.oneof?.name === "payload" && f.message !== undefined
      ? [[f.localName, { name: f.name, schema: f.message }] as const]
      : [],
  ),
);

/** A rare payload: protovalidate on the payload alone, its violations placed under the item. */
function checkByProtovalidate(
  kind: OtherCase,
  value: unknown,
  at: string,
  violations: FieldViolation[],
  validator: Validator,
): void {
  const field = PAYLOAD_FIELDS.get(kind);
  if (field === undefined) throw new Error(`PushItem has no payload ${kind}`);
  const result = validator.validate(field.schema, value as MessageShape<DescMessage>);
  if (result.kind === "valid") return;
  if (result.kind === "error") {
    throw new ParleyError("internal", "VALIDATION_ERROR", `cannot validate ${field.schema.typeName}`, {
      cause: result.error,
    });
  }
  const prefix = `${at}.${field.name}`;
  for (const v of result.violations) {
    const path = pathToString(v.field);
    violations.push({
      field: path === "" ? prefix : `${prefix}.${path}`,
      description: v.message,
      reason: v.ruleId.replace(/[^A-Za-z0-9]+/g, "_").toUpperCase(),
    });
  }
}

/** Length in characters (code points), as protovalidate's `string.max_len` counts. */
function characters(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

function isIdChar(c: number): boolean {
  return (
    (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 45
  );
}

function isAlnum(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
}

/** `^[A-Za-z0-9][A-Za-z0-9_.-]{0,max-1}$` */
function isIdOfAtMost(value: string, max: number): boolean {
  if (value.length < 1 || value.length > max || !isAlnum(value.charCodeAt(0))) return false;
  for (let i = 1; i < value.length; i++) if (!isIdChar(value.charCodeAt(i))) return false;
  return true;
}

/** The user_id and device_id rules: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`. */
function isLocalId(value: string): boolean {
  return isIdOfAtMost(value, 64);
}

/** host_id's pattern `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`. */
function isHostId(value: string): boolean {
  return isIdOfAtMost(value, 128);
}

function isLowerHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102);
}

/**
 * The traceparent rule for a non-empty value: `size <= 55` and
 * `^([0-9a-e][0-9a-f]|f[0-9a-e])-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$` (so exactly 55).
 */
export function isTraceparent(value: string): boolean {
  if (value.length !== 55) return false;
  for (let i = 0; i < 55; i++) {
    const c = value.charCodeAt(i);
    if (i === 2 || i === 35 || i === 52) {
      if (c !== 45 /* - */) return false;
    } else if (!isLowerHex(c)) {
      return false;
    }
  }
  // Version ff is invalid.
  return !(value.charCodeAt(0) === 102 && value.charCodeAt(1) === 102);
}
