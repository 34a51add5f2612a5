import { Code } from "@connectrpc/connect";
import type { ParleyClient } from "../../clients/ts/index.ts";
import { ParleyClientError } from "../../clients/ts/index.ts";
import { ContentKind } from "../../gen/parley/common/v1/envelope_pb.ts";
import type { PushBatchRequest } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { EdgePushService, PushOutcome } from "../../gen/parley/delivery/v1/edge_push_service_pb.ts";
import { closeChannel, createGrpcClient } from "../../lib/grpc/client.ts";
import { benchMessage } from "./bench-message.ts";
import type { BenchChild } from "./child.ts";
import type { BenchDevice } from "./population.ts";
import { stampPayload } from "./stamp.ts";

/** Offers messages at a rate for a while; the receiving side records what arrives. */
export interface StepRunner {
  /** Sends `rate` messages/s for `durationMs` with seqs from `firstSeq`; resolves once all were handed over. */
  run(rate: number, durationMs: number, firstSeq: number): Promise<StepSent>;
  close(): Promise<void>;
}

export interface StepSent {
  /** One past the last seq sent. */
  readonly endSeq: number;
  /** Refusals by code (a refused message is not expected to arrive). */
  readonly errors: Record<string, number>;
  /** Seqs refused, so "lost" counts only what was accepted. */
  readonly refused: number;
  /** From the first offer until the last was offered, ms (sends may still be answered after it). */
  readonly elapsedMs: number;
}

const TICK_MS = 10;

/**
 * Open loop: every tick, hands `emit` the number of messages due by now at `rate`, whatever
 * happened to the earlier ones (a closed loop would slow down with the system and hide its knee).
 */
export async function openLoop(
  rate: number,
  durationMs: number,
  emit: (count: number) => void,
): Promise<number> {
  const started = performance.now();
  let sent = 0;
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const elapsed = Math.min(performance.now() - started, durationMs);
      const due = Math.floor((rate * elapsed) / 1000) - sent;
      if (due > 0) {
        emit(due);
        sent += due;
      }
      if (elapsed >= durationMs) {
        clearInterval(timer);
        resolve();
      }
    }, TICK_MS);
  });
  return sent;
}

/** A baseline server (raw, relay) generating the messages itself at the rate. */
export function createBaselineRunner(child: BenchChild): StepRunner {
  return {
    async run(rate, durationMs, firstSeq) {
      const result = await child.request<{ endSeq: number; elapsedMs: number }>({
        type: "unicast",
        rate,
        durationMs,
        firstSeq,
      });
      return { endSeq: result.endSeq, errors: {}, refused: 0, elapsedMs: result.elapsedMs };
    },
    close: async () => {},
  };
}

const OUTCOME_NAMES: Record<number, string> = {
  [PushOutcome.UNSPECIFIED]: "UNSPECIFIED",
  [PushOutcome.PUSHED]: "PUSHED",
  [PushOutcome.NOT_CONNECTED]: "NOT_CONNECTED",
  [PushOutcome.STALE_ROUTE]: "STALE_ROUTE",
  [PushOutcome.OVERLOADED]: "OVERLOADED",
};

/** PushBatch allows at most 1,000 items per batch. */
const MAX_ITEMS = 1000;

/**
 * Parley's push path alone: the load generator acts as delivery and calls the edge's
 * EdgePushService.PushBatch once per tick with everything due (split at 1,000 items), one message
 * item per device as delivery sends them, each route at revision 1 (never newer than the stream's).
 */
export function createPushRunner(options: {
  readonly pushAddress: string;
  readonly hostId: string;
  readonly devices: readonly BenchDevice[];
  readonly payloadBytes: number;
}): StepRunner {
  const client = createGrpcClient(EdgePushService, options.pushAddress, { defaultDeadlineMs: 30_000 });
  let next = 0;
  return {
    async run(rate, durationMs, firstSeq) {
      const errors: Record<string, number> = {};
      let refused = 0;
      let seq = firstSeq;
      const inFlight = new Set<Promise<void>>();
      const count = (key: string, n = 1) => {
        errors[key] = (errors[key] ?? 0) + n;
      };
      const started = performance.now();
      await openLoop(rate, durationMs, (due) => {
        for (let offset = 0; offset < due; offset += MAX_ITEMS) {
          const items: PushBatchRequest["items"] = [];
          const routes = new Map<string, BenchDevice>();
          for (let k = offset; k < Math.min(due, offset + MAX_ITEMS); k++) {
            const device = options.devices[next++ % options.devices.length] as BenchDevice;
            routes.set(`${device.userId}/${device.deviceId}`, device);
            items.push({
              devices: [{ userId: device.userId, deviceId: device.deviceId }],
              payload: {
                case: "message",
                value: benchMessage(seq++, device.index, options.payloadBytes, crypto.randomUUID()),
              },
            } as PushBatchRequest["items"][number]);
          }
          const call = client
            .pushBatch({
              batchId: crypto.randomUUID(),
              hostId: options.hostId,
              routes: [...routes.values()].map((d) => ({
                device: { userId: d.userId, deviceId: d.deviceId },
                routeRevision: 1n,
              })),
              items,
            })
            .then(
              (response) => {
                for (const result of response.results) {
                  if (result.outcome !== PushOutcome.PUSHED) count(`push ${OUTCOME_NAMES[result.outcome]}`);
                }
              },
              (err: unknown) => {
                count(`PushBatch ${(err as { code?: number }).code ?? "error"}`, items.length);
                refused += items.length;
              },
            )
            .finally(() => inFlight.delete(call));
          inFlight.add(call);
        }
      });
      const elapsedMs = performance.now() - started;
      await Promise.all(inFlight);
      return { endSeq: seq, errors, refused, elapsedMs };
    },
    async close() {
      closeChannel(client);
    },
  };
}

/** One direction of a conversation: who writes to whom. */
export interface SdkSender {
  readonly client: ParleyClient;
  readonly conversationId: string;
  /** Every device that must get the message (all of the recipient's; the sender's other devices). */
  readonly recipients: readonly BenchDevice[];
}

export function errorKey(err: unknown): string {
  if (err instanceof ParleyClientError) return `${Code[err.code] ?? err.code} ${err.reason}`;
  return err instanceof Error ? err.message.slice(0, 80) : String(err);
}

/**
 * The whole durable pipeline through the SDK: each message is a `client.send` (a Session send
 * frame) of a pairwise envelope, one stamped ciphertext per recipient device; senders take turns.
 */
export function createSdkRunner(senders: readonly SdkSender[], payloadBytes: number): StepRunner {
  let turn = 0;
  return {
    async run(rate, durationMs, firstSeq) {
      const errors: Record<string, number> = {};
      let refused = 0;
      let seq = firstSeq;
      const inFlight = new Set<Promise<unknown>>();
      const started = performance.now();
      await openLoop(rate, durationMs, (due) => {
        for (let k = 0; k < due; k++) {
          const sender = senders[turn++ % senders.length] as SdkSender;
          const messageSeq = seq++;
          const byUser = new Map<string, { deviceId: string; ciphertext: Uint8Array }[]>();
          for (const device of sender.recipients) {
            const list = byUser.get(device.userId) ?? [];
            list.push({
              deviceId: device.deviceId,
              ciphertext: stampPayload(messageSeq, device.index, payloadBytes),
            });
            byUser.set(device.userId, list);
          }
          const send = sender.client
            .send({
              conversationId: sender.conversationId,
              envelope: {
                kind: ContentKind.TEXT,
                payload: {
                  case: "perDevice",
                  value: { recipients: [...byUser].map(([userId, devices]) => ({ userId, devices })) },
                },
              },
            })
            .catch((err: unknown) => {
              const key = errorKey(err);
              errors[key] = (errors[key] ?? 0) + 1;
              refused++;
            })
            .finally(() => inFlight.delete(send));
          inFlight.add(send);
        }
      });
      const elapsedMs = performance.now() - started;
      await Promise.all(inFlight);
      return { endSeq: seq, errors, refused, elapsedMs };
    },
    close: async () => {},
  };
}
