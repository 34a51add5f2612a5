import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EnvelopeSchema } from "../../../../gen/parley/common/v1/envelope_pb.ts";
import type { Broker } from "../../../../lib/broker/broker.ts";
import { MAX_PAYLOAD_BYTES } from "../../../../lib/broker/broker.ts";
import { createEmbeddedBroker } from "../../../../lib/broker/embedded-broker.ts";
import { isParleyError } from "../../../../lib/errors.ts";
import { createAcceptedMessagePublisher } from "./accepted-message-publisher.ts";

const message = {
  messageId: "0190f1c2-0000-7000-8000-000000000001",
  conversationId: "d5851327-f0f0-5c65-9ecc-c7a4406d5884",
  sender: { userId: "alice", deviceId: "phone" },
  clientMessageId: "c1",
  envelope: create(EnvelopeSchema, {}),
  acceptedAt: new Date(),
  recipientDevices: [{ userId: "bob", deviceId: "laptop" }],
  membershipVersion: 1n,
  forceTrace: false,
};

/** What publishing `accepted` through `broker` fails with (undefined if it does not fail). */
function publishFailure(broker: Broker, accepted: typeof message): Promise<unknown> {
  return createAcceptedMessagePublisher(broker)
    .publish(accepted)
    .then(
      () => undefined,
      (err: unknown) => err,
    );
}

describe("accepted message publisher", () => {
  it("turns a broker that cannot take the message into UNAVAILABLE with a retry delay, so clients retry", async () => {
    const broker = await createEmbeddedBroker({ path: ":memory:" });
    await broker.close();
    const error = await publishFailure(broker, message);
    expect(isParleyError(error) && error.code).toBe("unavailable");
    expect(isParleyError(error) && error.reason).toBe("BROKER_UNAVAILABLE");
    expect(isParleyError(error) && error.retryDelayMs).toBeGreaterThan(0);
  });

  it("turns an event too large for the broker into a final MESSAGE_TOO_LARGE, which clients do not retry", async () => {
    const broker = await createEmbeddedBroker({ path: ":memory:" });
    try {
      const tooLarge = {
        ...message,
        recipientDevices: [],
        envelope: create(EnvelopeSchema, {
          payload: { case: "shared", value: { ciphertext: new Uint8Array(MAX_PAYLOAD_BYTES) } },
        }),
      };
      const error = await publishFailure(broker, tooLarge);
      expect(isParleyError(error) && error.code).toBe("resource_exhausted");
      expect(isParleyError(error) && error.reason).toBe("MESSAGE_TOO_LARGE");
    } finally {
      await broker.close();
    }
  });
});
