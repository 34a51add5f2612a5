import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { v7 as uuidv7 } from "uuid";
import {
  KeyChangedSchema,
  KeyChangeKind,
  PrekeysLowSchema,
} from "../../../gen/parley/events/v1/key_events_pb.ts";
import { Topics } from "../../../lib/broker/broker.ts";
import type { OutboxEvent } from "../../../lib/outbox.ts";
import type { DeviceAddress } from "./model.ts";

export type KeyChange = "device_added" | "device_removed" | "identity_rotated" | "signed_prekey_rotated";

const KIND: Record<KeyChange, KeyChangeKind> = {
  device_added: KeyChangeKind.DEVICE_ADDED,
  device_removed: KeyChangeKind.DEVICE_REMOVED,
  identity_rotated: KeyChangeKind.IDENTITY_ROTATED,
  signed_prekey_rotated: KeyChangeKind.SIGNED_PREKEY_ROTATED,
};

function properties(traceparent: string): Record<string, string> {
  return traceparent === "" ? {} : { traceparent };
}

/** KeyChanged on `chat.keys`, keyed by user id so one user's changes stay in order. */
export function keyChangedEvent(facts: {
  readonly address: DeviceAddress;
  readonly change: KeyChange;
  /** The device's current identity key; empty when it was removed. */
  readonly identityKey: Uint8Array;
  readonly keyVersion: number;
  readonly effectiveAt: Date;
  readonly previousValidUntil?: Date | undefined;
  readonly traceparent: string;
}): OutboxEvent {
  const event = create(KeyChangedSchema, {
    eventId: uuidv7(),
    device: { userId: facts.address.userId, deviceId: facts.address.deviceId },
    kind: KIND[facts.change],
    identityKey: facts.identityKey,
    keyVersion: BigInt(facts.keyVersion),
    effectiveAt: timestampFromDate(facts.effectiveAt),
    ...(facts.previousValidUntil === undefined
      ? {}
      : { previousValidUntil: timestampFromDate(facts.previousValidUntil) }),
    traceparent: facts.traceparent,
  });
  return {
    topic: Topics.keys,
    key: facts.address.userId,
    payload: toBinary(KeyChangedSchema, event),
    properties: properties(facts.traceparent),
  };
}

/** PrekeysLow on `chat.prekeys`, keyed by "<user_id>/<device_id>". */
export function prekeysLowEvent(facts: {
  readonly address: DeviceAddress;
  readonly oneTimePrekeyCount: number;
  readonly lowWatermark: number;
  readonly lastResortPrekeyUsed: boolean;
  readonly detectedAt: Date;
  readonly traceparent: string;
}): OutboxEvent {
  const event = create(PrekeysLowSchema, {
    eventId: uuidv7(),
    device: { userId: facts.address.userId, deviceId: facts.address.deviceId },
    oneTimePrekeyCount: facts.oneTimePrekeyCount,
    lowWatermark: facts.lowWatermark,
    lastResortPrekeyUsed: facts.lastResortPrekeyUsed,
    detectedAt: timestampFromDate(facts.detectedAt),
    traceparent: facts.traceparent,
  });
  return {
    topic: Topics.prekeys,
    key: `${facts.address.userId}/${facts.address.deviceId}`,
    payload: toBinary(PrekeysLowSchema, event),
    properties: properties(facts.traceparent),
  };
}
