import { toBinary } from "@bufbuild/protobuf";
import {
  PresenceChangedSchema,
  TypingChangedSchema,
} from "../../../../gen/parley/events/v1/presence_events_pb.ts";
import type { Broker } from "../../../../lib/broker/broker.ts";
import { Topics } from "../../../../lib/broker/broker.ts";
import type { EphemeralEvents } from "../../domain/ports.ts";

/** Presence and typing on the non-persistent topics (key = user id, conversation id). */
export function createBrokerEphemeralEvents(broker: Broker): EphemeralEvents {
  const properties = (traceparent: string): Record<string, string> =>
    traceparent === "" ? {} : { traceparent };
  return {
    presenceChanged(event) {
      broker.publishEphemeral(Topics.presence, {
        key: event.userId,
        payload: toBinary(PresenceChangedSchema, event),
        properties: properties(event.traceparent),
      });
    },
    typingChanged(event) {
      broker.publishEphemeral(Topics.typing, {
        key: event.conversationId,
        payload: toBinary(TypingChangedSchema, event),
        properties: properties(event.traceparent),
      });
    },
  };
}
