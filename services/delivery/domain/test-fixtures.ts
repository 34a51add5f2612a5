// Shared by delivery's tests; not used by the service. Routes come from the real in-process
// registry through the real watch-cache adapter; only the edge hosts are stood in for.
import { createLogger } from "../../../lib/logging.ts";
import type { InProcessRegistry } from "../../../lib/registry/in-process-registry.ts";
import { createInProcessRegistry } from "../../../lib/registry/in-process-registry.ts";
import type { HostLease } from "../../../lib/registry/registry.ts";
import { ConversationView } from "../../../lib/views/conversation-view.ts";
import { createMemoryCheckpointStore } from "../adapters/memory/checkpoint-store.ts";
import type { RegistryRouteDirectory } from "../adapters/registry/route-directory.ts";
import { createRegistryRouteDirectory } from "../adapters/registry/route-directory.ts";
import type { DispatcherOptions } from "./dispatch.ts";
import { createDispatcher } from "./dispatch.ts";
import type {
  DeliveryMetrics,
  DeviceOutcome,
  EdgeHostRef,
  EdgePusher,
  PushBatch,
  PushBatchResult,
  PushMetricOutcome,
} from "./ports.ts";

export const silentLogger = createLogger("delivery-test", "silent");

export const ids = {
  aliceBob: "00000000-0000-5000-8000-0000000000ab",
  aliceCarol: "00000000-0000-5000-8000-0000000000ac",
  daveErin: "00000000-0000-5000-8000-0000000000de",
  group: "00000000-0000-7000-8000-000000000001",
} as const;

/** A flush of pending microtasks and I/O callbacks: registry watch events are handed over then. */
export const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * The world of the domain tests:
 * - alice is an accepted contact of bob and carol (direct conversations), and in a group with bob,
 *   carol and dave; dave and erin are contacts.
 * - devices: alice/phone and bob/phone on h1; alice/laptop, carol/tablet and dave/phone on h2;
 *   bob/laptop and erin/phone are offline (no route).
 */
export function conversationWorld(): ConversationView {
  const view = new ConversationView();
  const direct = (conversationId: string, members: string[]) =>
    view.applyMembership({
      conversationId,
      kind: "direct",
      version: 1n,
      memberUserIds: members,
      deleted: false,
    });
  direct(ids.aliceBob, ["alice", "bob"]);
  direct(ids.aliceCarol, ["alice", "carol"]);
  direct(ids.daveErin, ["dave", "erin"]);
  view.applyMembership({
    conversationId: ids.group,
    kind: "group",
    version: 1n,
    memberUserIds: ["alice", "bob", "carol", "dave"],
    deleted: false,
  });
  return view;
}

export interface RoutedWorld {
  readonly registry: InProcessRegistry;
  readonly routes: RegistryRouteDirectory;
  readonly leases: Record<string, HostLease>;
  /** Route revisions by "user/device". */
  readonly revisions: Map<string, bigint>;
  close(): Promise<void>;
}

export async function routedWorld(
  placement: Record<string, string[]> = {
    h1: ["alice/phone", "bob/phone"],
    h2: ["alice/laptop", "carol/tablet", "dave/phone"],
  },
): Promise<RoutedWorld> {
  const registry = createInProcessRegistry({ sweepIntervalMs: 3_600_000, logger: silentLogger });
  const leases: Record<string, HostLease> = {};
  const revisions = new Map<string, bigint>();
  for (const [hostId, devices] of Object.entries(placement)) {
    const lease = await registry.registerHost({
      hostId,
      pushAddress: `${hostId}.internal:7000`,
      publicUrl: `http://${hostId}.example`,
      state: "serving",
      load: devices.length,
    });
    leases[hostId] = lease;
    for (const device of devices) {
      const [user = "", id = ""] = device.split("/");
      revisions.set(device, await lease.assignDevice(user, id));
    }
  }
  const routes = await createRegistryRouteDirectory(registry);
  return {
    registry,
    routes,
    leases,
    revisions,
    async close() {
      await routes.close();
      await registry.close();
    },
  };
}

export type Answer = (host: EdgeHostRef, batch: PushBatch) => PushBatchResult | Error;

/** Answers PUSHED for every device at the revision it was routed at. */
export const pushEverything: Answer = (_host, batch) => ({
  results: batch.routes.map((r) => ({
    device: r.device,
    outcome: "pushed" as DeviceOutcome,
    routeRevision: r.revision,
  })),
  draining: false,
});

/** An EdgePusher standing in for the edge hosts: records every call and answers with `answer`. */
export function recordingPusher(answer: Answer = pushEverything) {
  const calls: Array<{ host: EdgeHostRef; batch: PushBatch }> = [];
  const pusher: EdgePusher & { calls: typeof calls; answer: Answer } = {
    calls,
    answer,
    async push(host, batch) {
      calls.push({ host, batch });
      const result = pusher.answer(host, batch);
      if (result instanceof Error) throw result;
      return result;
    },
  };
  return pusher;
}

export function countingMetrics() {
  const counts = {
    fanOut: [] as Array<{ kind: string; devices: number }>,
    checkpointHits: 0,
    pushes: new Map<PushMetricOutcome, number>(),
    pushLatenciesMs: [] as number[],
  };
  const metrics: DeliveryMetrics = {
    fanOut: (kind, devices) => counts.fanOut.push({ kind, devices }),
    checkpointHit: () => {
      counts.checkpointHits++;
    },
    pushes: (outcome, devices) => counts.pushes.set(outcome, (counts.pushes.get(outcome) ?? 0) + devices),
    messagePushed: (ms) => counts.pushLatenciesMs.push(ms),
  };
  return { metrics, counts };
}

/** A dispatcher on the world's routes, a recording pusher, in-memory checkpoints and no real sleeping. */
export function testDispatcher(world: RoutedWorld, overrides: Partial<DispatcherOptions> = {}) {
  const pusher = recordingPusher();
  const checkpoints = createMemoryCheckpointStore();
  const { metrics, counts } = countingMetrics();
  const sleeps: number[] = [];
  const dispatcher = createDispatcher({
    routes: world.routes,
    pusher,
    checkpoints,
    metrics,
    logger: silentLogger,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    random: () => 1,
    ...overrides,
  });
  return { dispatcher, pusher, checkpoints, counts, sleeps };
}

/** "user/device" of every device a recorded batch item addresses, per host, in push order. */
export function pushedTo(
  calls: ReadonlyArray<{ host: EdgeHostRef; batch: PushBatch }>,
): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const { host, batch } of calls) {
    const list = out[host.hostId] ?? [];
    for (const item of batch.items) for (const d of item.devices) list.push(`${d.userId}/${d.deviceId}`);
    out[host.hostId] = list;
  }
  return out;
}
