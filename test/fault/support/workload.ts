// The workload of a fault scenario: users with devices and conversations made through the edge's
// public API (test/support/mesh-users.ts), one SDK client per device wired to the recorder, and a
// traffic driver whose choices (who sends, where) come from a seed.
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Transport } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import type {
  BackoffOptions,
  ErrorEvent,
  ParleyClient,
  ParleyClientOptions,
} from "../../../clients/ts/index.ts";
import { createMemoryStateStore, ParleyClientError } from "../../../clients/ts/index.ts";
import type { Message } from "../../../gen/parley/common/v1/message_pb.ts";
import type { ServerFrame } from "../../../gen/parley/edge/v1/frames_pb.ts";
import { SeqOrder } from "../../../gen/parley/history/v1/history_pb.ts";
import type { TestDevice, TestUser } from "../../support/mesh-users.ts";
import {
  connectUsers,
  createGroup,
  createUser,
  inBatches,
  pairwiseEnvelope,
  sharedEnvelope,
} from "../../support/mesh-users.ts";
import type { CheckResult } from "./checker.ts";
import { check, describeViolations } from "./checker.ts";
import type { FaultCluster } from "./fault-cluster.ts";
import { KEEP_VARIABLE } from "./fault-cluster.ts";
import type { DeviceKey, Recorder } from "./history.ts";
import { deviceKey, saveHistory } from "./history.ts";
import type { Random } from "./random.ts";
import type { TcpRelay } from "./tcp-relay.ts";
import { startTcpRelay, targetOf } from "./tcp-relay.ts";

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface ConversationSpec {
  readonly conversationId: string;
  readonly kind: "direct" | "group";
  readonly members: readonly TestUser[];
}

export interface PopulationSpec {
  /** Unique per population on one cluster (user ids start with it). */
  readonly prefix: string;
  readonly users: number;
  /** Devices of user i (default 1). */
  readonly devicesOf?: (index: number) => number;
  /** 1:1 conversations between these users (by index). */
  readonly direct?: readonly (readonly [number, number])[];
  /** Groups: owner and members by index (members must not already be the owner's contacts). */
  readonly groups?: readonly { readonly owner: number; readonly members: readonly number[] }[];
  /** Set-up calls in flight at once. Default 16. */
  readonly concurrency?: number;
}

export interface Population {
  readonly users: readonly TestUser[];
  readonly devices: readonly TestDevice[];
  readonly conversations: readonly ConversationSpec[];
  conversationsOf(device: TestDevice): ConversationSpec[];
}

export async function createPopulation(mesh: FaultCluster, spec: PopulationSpec): Promise<Population> {
  const concurrency = spec.concurrency ?? 16;
  const users = await inBatches(
    Array.from({ length: spec.users }, (_, i) => i),
    concurrency,
    (i) =>
      createUser(
        mesh,
        `${spec.prefix}-u${i}`,
        Array.from({ length: spec.devicesOf?.(i) ?? 1 }, (_, d) => `d${d}`),
      ),
  );
  const user = (i: number) => {
    const found = users[i];
    if (found === undefined) throw new Error(`population ${spec.prefix} has no user ${i}`);
    return found;
  };
  const conversations: ConversationSpec[] = [];
  for (const [a, b] of spec.direct ?? []) {
    conversations.push({
      conversationId: await connectUsers(user(a), user(b)),
      kind: "direct",
      members: [user(a), user(b)],
    });
  }
  for (const group of spec.groups ?? []) {
    const owner = user(group.owner);
    const members = group.members.map(user);
    conversations.push({
      conversationId: await createGroup(owner, members, `${spec.prefix}-group`, concurrency),
      kind: "group",
      members: [owner, ...members],
    });
  }
  const devices = users.flatMap((u) => u.devices);
  return {
    users,
    devices,
    conversations,
    conversationsOf: (device) =>
      conversations.filter((c) => c.members.some((m) => m.userId === device.userId)),
  };
}

/** The network between a set of devices and the cluster: a relay per URL they may dial. */
export interface DeviceNetwork {
  /** The relay URL standing for `url` (the front door or an edge). */
  map(url: string): string;
  readonly relays: readonly TcpRelay[];
  cutAll(): void;
  refuse(): void;
  mute(): void;
  blackhole(): void;
  heal(): void;
  close(): Promise<void>;
}

/** Relays for the front door and every edge: devices on this network reach the cluster only through them. */
export async function createDeviceNetwork(mesh: FaultCluster): Promise<DeviceNetwork> {
  const urls = [mesh.frontDoor.url, ...mesh.edgeUrls];
  const relays = await Promise.all(urls.map((url) => startTcpRelay(() => [targetOf(url)])));
  const byUrl = new Map(urls.map((url, i) => [url, (relays[i] as TcpRelay).url]));
  const every = (action: (relay: TcpRelay) => void) => {
    for (const relay of relays) action(relay);
  };
  return {
    map: (url) => byUrl.get(url) ?? url,
    relays,
    cutAll: () => every((r) => r.cutAll()),
    refuse: () => every((r) => r.refuse()),
    mute: () => every((r) => r.mute()),
    blackhole: () => every((r) => r.blackhole()),
    heal: () => every((r) => r.heal()),
    async close() {
      for (const relay of relays) await relay.close();
    },
  };
}

/** One device as the fault run drives it: its SDK client, errors, and the raw copies it was sent. */
export interface FaultDevice {
  readonly key: DeviceKey;
  readonly device: TestDevice;
  readonly client: ParleyClient;
  readonly errors: ErrorEvent[];
  /** Message frames (stream and Sync) per message id, before the SDK's dedup: copies beyond the first are residue. */
  readonly received: Map<string, number>;
  /** The edge host the client last opened a transport to (after Locate or a Drain), if any yet. */
  readonly edgeUrl: string | undefined;
  /** Why its streams ended and it had to reconnect: `code [reason]` -> times. */
  readonly reconnects: Map<string, number>;
}

export interface ClientSettings {
  /** Where displays, receipts and gaps go: a function when one population serves several runs. */
  readonly recorder: Recorder | (() => Recorder);
  readonly random: Random;
  /** False in a control run: the SDK hands every copy to the app (clients/ts `dedup`). */
  readonly dedup?: boolean;
  readonly backoff?: BackoffOptions;
  /** Devices reach the cluster through this network (default: straight, on the shared pools). */
  readonly network?: (device: TestDevice) => DeviceNetwork | undefined;
  readonly overrides?: Partial<ParleyClientOptions>;
}

/**
 * An SDK client per device, configured as an app would be in the cluster: the front door as base
 * URL, Locate before each stream, a seeded full-jitter backoff; every display, receipt and gap goes
 * to the recorder. Not connected yet.
 */
export function attachClients(
  mesh: FaultCluster,
  devices: readonly TestDevice[],
  settings: ClientSettings,
): FaultDevice[] {
  return devices.map((device) => {
    const key = deviceKey(device.userId, device.deviceId);
    const network = settings.network?.(device);
    const route = (url: string) => network?.map(url) ?? url;
    const received = new Map<string, number>();
    const count = (messageId: string) => received.set(messageId, (received.get(messageId) ?? 0) + 1);
    let edgeUrl: string | undefined;
    const client = device.newClient({
      transport: (url: string) => {
        if (url !== mesh.frontDoor.url) edgeUrl = url;
        return tapped(mesh.transportFor(route(url)), count);
      },
      baseUrl: mesh.frontDoor.url,
      locate: true,
      store: createMemoryStateStore(),
      random: settings.random.fork(key),
      backoff: settings.backoff ?? { baseMs: 200, maxMs: 5_000 },
      ...(settings.dedup === false ? { dedup: false } : {}),
      ...settings.overrides,
    });
    const errors: ErrorEvent[] = [];
    const { recorder } = settings;
    const current = typeof recorder === "function" ? recorder : () => recorder;
    client.onMessage((incoming) => current().display(key, incoming));
    client.onReceipt((receipt) => current().receipt(key, receipt));
    client.onGap((gap) => current().gap(key, gap));
    client.onError((event) => {
      errors.push(event);
    });
    const reconnects = new Map<string, number>();
    client.onStateChange((change) => {
      if (change.state !== "reconnecting") return;
      const why =
        change.error === undefined
          ? "drain or restart"
          : `${Code[change.error.code]} [${change.error.reason}]`;
      reconnects.set(why, (reconnects.get(why) ?? 0) + 1);
    });
    return {
      key,
      device,
      client,
      errors,
      received,
      reconnects,
      get edgeUrl() {
        return edgeUrl;
      },
    };
  });
}

/** Counts every message the edge sends the device (stream frames, Sync items) before the SDK sees it. */
function tapped(inner: Transport, count: (messageId: string) => void): Transport {
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      const response = await inner.unary(method, signal, timeoutMs, header, input, contextValues);
      if (method.name === "Sync") {
        const items = (response.message as { items?: { item: { case?: string; value?: unknown } }[] }).items;
        for (const item of items ?? []) {
          if (item.item.case === "message") count((item.item.value as Message).messageId);
        }
      }
      return response;
    },
    async stream(method, signal, timeoutMs, header, input, contextValues) {
      const response = await inner.stream(method, signal, timeoutMs, header, input, contextValues);
      if (method.name !== "Session") return response;
      const source = response.message;
      async function* frames() {
        for await (const message of source) {
          const frame = (message as { frame?: ServerFrame }).frame;
          if (frame?.body.case === "message" && frame.body.value.message !== undefined) {
            count(frame.body.value.message.messageId);
          }
          yield message;
        }
      }
      return { ...response, message: frames() };
    },
  };
}

export async function connectAll(devices: readonly FaultDevice[], concurrency = 32): Promise<void> {
  await inBatches(devices, concurrency, (d) => d.client.connect());
}

export async function closeAll(devices: readonly FaultDevice[], concurrency = 64): Promise<void> {
  await inBatches(devices, concurrency, (d) => d.client.close().catch(() => {}));
}

/** Why devices reconnected, over all devices, most frequent first: `code [reason] ×n, ...`. */
export function reconnectSummary(devices: readonly FaultDevice[], top = 4): string {
  const total = new Map<string, number>();
  for (const d of devices) for (const [why, n] of d.reconnects) total.set(why, (total.get(why) ?? 0) + n);
  const sorted = [...total].sort((a, b) => b[1] - a[1]);
  return sorted.length === 0
    ? "none"
    : sorted
        .slice(0, top)
        .map(([why, n]) => `${why} ×${n}`)
        .join(", ");
}

/** Clears the reconnect tallies (a population serving several runs). */
export function resetReconnects(devices: readonly FaultDevice[]): void {
  for (const d of devices) d.reconnects.clear();
}

/** Message copies the edge delivered beyond the first, over all devices: what the SDK's dedup hid. */
export function residue(devices: readonly FaultDevice[]): number {
  let extra = 0;
  for (const d of devices) for (const n of d.received.values()) extra += n - 1;
  return extra;
}

export interface TrafficOptions {
  readonly recorder: Recorder;
  readonly random: Random;
  readonly population: Population;
  /** Who sends (each sends one message at a time, so its messages keep their order). */
  readonly senders: readonly FaultDevice[];
  /** Sends started per second, over all senders. */
  readonly ratePerSecond: number;
  /** Stop starting sends after this many. Default: until stop(). */
  readonly count?: number;
  /**
   * Every n-th send (the 1st, the n+1-th...) is sent again with its client_message_id once
   * acknowledged, as an app that never saw the answer would: I5 is exercised in every run.
   * Default 10.
   */
  readonly repeatEvery?: number;
  /** Only these conversations (default: every conversation of the sender). */
  readonly conversations?: readonly ConversationSpec[];
}

export interface TrafficStats {
  readonly started: number;
  /** Turns skipped because the chosen sender still had two sends in flight (a slow cluster). */
  readonly skipped: number;
  readonly acked: number;
  /** App-level retries after a send failed for good in the SDK (SDK retries are not counted). */
  readonly appRetries: number;
  /** Sends still unacknowledged when the drain gave up. */
  readonly unacked: number;
}

export interface Traffic {
  readonly started: number;
  /** Resolves once `count` sends were started (or stop() was called). */
  readonly startedAll: Promise<void>;
  /** Stops starting sends, waits up to `drainMs` for those started to be acknowledged. */
  stop(drainMs?: number): Promise<TrafficStats>;
}

/**
 * Steady traffic: every 1/rate s a seeded choice of sender and conversation; the send goes into
 * that sender's queue. A send the SDK gives up on is retried by the "app" with the same
 * client_message_id (and content) until it is acknowledged or the drain ends.
 */
export function startTraffic(options: TrafficOptions): Traffic {
  const { recorder, random } = options;
  const repeatEvery = options.repeatEvery ?? 10;
  const queues = new Map<FaultDevice, Promise<void>>();
  const queued = new Map<FaultDevice, number>();
  let started = 0;
  let skipped = 0;
  let acked = 0;
  let appRetries = 0;
  let unacked = 0;
  let stopping = false;
  let drainDeadline = Number.POSITIVE_INFINITY;
  let resolveStarted: () => void = () => {};
  const startedAll = new Promise<void>((resolve) => {
    resolveStarted = resolve;
  });

  const candidates = options.senders
    .map((sender) => ({
      sender,
      conversations: options.population
        .conversationsOf(sender.device)
        .filter((c) => options.conversations === undefined || options.conversations.includes(c)),
    }))
    .filter((c) => c.conversations.length > 0);
  if (candidates.length === 0) throw new Error("no sender is in any of the conversations");

  const sendUntilAcked = async (sender: FaultDevice, conversation: ConversationSpec, input: SendInit) => {
    const outcome = await sendUntilAcknowledged(recorder, sender, conversation, input, () => drainDeadline);
    appRetries += outcome.retries;
    return outcome.acked;
  };

  const one = async (sender: FaultDevice, conversation: ConversationSpec, again: boolean) => {
    const input = sendInit(sender, conversation, `${sender.key}#${started}`);
    if (!(await sendUntilAcked(sender, conversation, input))) {
      unacked += 1;
      return;
    }
    acked += 1;
    if (again) await sendUntilAcked(sender, conversation, input);
  };

  const interval = 1_000 / options.ratePerSecond;
  const begin = Date.now();
  const tick = () => {
    // Catch up on ticks a busy event loop delayed, so the rate is kept on average.
    const due = Math.floor((Date.now() - begin) / interval) + 1;
    while (!stopping && started + skipped < due && (options.count === undefined || started < options.count)) {
      const { sender, conversations } = random.pick(candidates);
      const conversation = random.pick(conversations);
      // A sender still busy with two sends skips its turn: a slow cluster must not pile up a
      // backlog that takes minutes to drain.
      if ((queued.get(sender) ?? 0) >= 2) {
        skipped += 1;
        continue;
      }
      const again = started % repeatEvery === 0;
      started += 1;
      queued.set(sender, (queued.get(sender) ?? 0) + 1);
      const previous = queues.get(sender) ?? Promise.resolve();
      queues.set(
        sender,
        previous
          .then(() => one(sender, conversation, again))
          .finally(() => queued.set(sender, (queued.get(sender) ?? 1) - 1)),
      );
    }
    if (options.count !== undefined && started >= options.count) {
      clearInterval(timer);
      resolveStarted();
    }
  };
  const timer = setInterval(tick, Math.max(5, Math.floor(interval)));

  return {
    get started() {
      return started;
    },
    startedAll,
    async stop(drainMs = 120_000) {
      stopping = true;
      clearInterval(timer);
      resolveStarted();
      drainDeadline = Date.now() + drainMs;
      await Promise.all(queues.values());
      return { started, skipped, acked, appRetries, unacked };
    },
  };
}

export type SendInit = Parameters<ParleyClient["send"]>[0] & { readonly clientMessageId: string };

/**
 * Sends as an app does: the SDK retries inside `send`; when it gives up, the app tries again with
 * the same client_message_id and content, until the server accepts or `deadline()` passes. Every
 * answer and failure goes to the recorder.
 */
export async function sendUntilAcknowledged(
  recorder: Recorder,
  sender: FaultDevice,
  conversation: ConversationSpec,
  input: SendInit,
  deadline: () => number = () => Number.POSITIVE_INFINITY,
): Promise<{ readonly acked: boolean; readonly retries: number; readonly messageId?: string }> {
  const record = recorder.send(sender.key, conversation.conversationId, input.clientMessageId);
  for (let attempt = 0; ; attempt++) {
    const startedAt = recorder.tick();
    try {
      const outcome = await sender.client.send(input);
      recorder.accepted(record, startedAt, outcome.messageId, outcome.duplicate);
      return { acked: true, retries: attempt, messageId: outcome.messageId };
    } catch (err) {
      recorder.failed(record, startedAt, describeError(err));
      if (Date.now() > deadline()) return { acked: false, retries: attempt };
      await sleep(Math.min(5_000, 250 * 2 ** Math.min(attempt, 4)));
      if (Date.now() > deadline()) return { acked: false, retries: attempt };
    }
  }
}

/** A send of `text` to `conversation`: shared payload in groups, pairwise in 1:1 conversations. */
export function sendInit(sender: FaultDevice, conversation: ConversationSpec, text: string): SendInit {
  return {
    conversationId: conversation.conversationId,
    clientMessageId: crypto.randomUUID(),
    envelope:
      conversation.kind === "group"
        ? sharedEnvelope(text)
        : pairwiseEnvelope(sender.device, conversation.members, text),
  };
}

function describeError(err: unknown): string {
  if (err instanceof ParleyClientError) return `${err.code} [${err.reason}] ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/**
 * Waits until every acknowledged send was displayed by every device it targets (no I1 violation
 * left), then `settleMs` more for late duplicates; resolves with how long it took, or with the
 * number still missing once `timeoutMs` passed or nothing was displayed for `stallMs` (the checker
 * reports them).
 */
export async function waitForQuiescence(
  recorder: Recorder,
  options: { readonly timeoutMs?: number; readonly settleMs?: number; readonly stallMs?: number } = {},
): Promise<{ readonly ms: number; readonly missing: number }> {
  const startedAt = Date.now();
  const deadline = startedAt + (options.timeoutMs ?? 60_000);
  const stallMs = options.stallMs ?? 60_000;
  let missing = Number.POSITIVE_INFINITY;
  let reported = startedAt;
  let progressAt = startedAt;
  while (Date.now() < deadline) {
    const now = check(recorder.history()).violations.filter((v) => v.invariant === "I1").length;
    if (now < missing) progressAt = Date.now();
    missing = now;
    if (missing === 0) break;
    // Nothing shown for this long: what is missing will not come (a control run's loss).
    if (Date.now() - progressAt > stallMs) {
      recorder.note(`gave up waiting: ${missing} displays missing, none shown for ${stallMs} ms`);
      break;
    }
    if (Date.now() - reported >= 10_000) {
      reported = Date.now();
      recorder.note(`waiting: ${missing} displays missing`);
    }
    await sleep(500);
  }
  const ms = Date.now() - startedAt;
  await sleep(options.settleMs ?? 2_000);
  return { ms, missing };
}

/** Reads every conversation back from history (ListMessages, oldest first) into the recorder. */
export async function recordStored(recorder: Recorder, population: Population): Promise<void> {
  for (const conversation of population.conversations) {
    const reader = conversation.members[0]?.primary;
    if (reader === undefined) continue;
    const messages: Message[] = [];
    let pageToken = "";
    do {
      const page = await reader.raw.history.listMessages({
        conversationId: conversation.conversationId,
        order: SeqOrder.OLDEST_FIRST,
        pageSize: 1_000,
        pageToken,
      });
      messages.push(...page.messages);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    recorder.stored(conversation.conversationId, messages);
  }
}

/** Tells the recorder who is in which conversation (every device of every member is a target). */
export function describeConversations(recorder: Recorder, population: Population): void {
  for (const c of population.conversations) {
    recorder.conversation({
      conversationId: c.conversationId,
      kind: c.kind,
      devices: c.members.flatMap((m) => m.devices.map((d) => deviceKey(d.userId, d.deviceId))),
    });
  }
}

/**
 * Checks the run, prints one line of figures, and saves the history as JSON under
 * $TMPDIR/parley-fault-histories when anything is violated (the path is in the line).
 */
export function finishRun(
  recorder: Recorder,
  label: string,
  figures: Readonly<Record<string, string | number>> = {},
  options: { readonly control?: boolean } = {},
): CheckResult {
  const history = recorder.history();
  const result = check(history);
  // A control run is expected to fail: its history is kept only on request.
  const keep =
    result.violations.length > 0 && (options.control !== true || process.env[KEEP_VARIABLE] === "1");
  const saved = keep
    ? saveHistory(
        history,
        join(tmpdir(), "parley-fault-histories"),
        `${label.replace(/\W+/g, "-")}-${Date.now()}`,
      )
    : undefined;
  const parts = [
    `acked ${result.summary.ackedSends}`,
    `repeated ${result.summary.repeatedSends}`,
    `first answered as a retry ${result.summary.answeredAsRetry}`,
    `displays ${result.summary.displays}/${result.summary.expectedDisplays} expected`,
    `receipts ${result.summary.receipts}`,
    ...Object.entries(figures).map(([k, v]) => `${k} ${v}`),
    result.violations.length === 0
      ? "no violations"
      : `VIOLATIONS:\n${describeViolations(result.violations)}`,
    ...(saved === undefined ? [] : [`history: ${saved}`]),
    ...history.notes.map((n) => `\n  +${n.ms} ms: ${n.text}`),
  ];
  console.info(`[fault] ${label}: ${parts.join(", ")}`);
  return result;
}
