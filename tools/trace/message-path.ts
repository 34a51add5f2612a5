/**
 * A message's path through the mesh from collected spans: its trace (edge send -> sender -> broker
 * -> history -> broker -> delivery -> edge push) and the traces of the acks that link to it (one per
 * acknowledging device, each with history's record of it and the receipt's way back).
 */
import type { AttributeValue } from "@opentelemetry/api";
import type { SpanRecord } from "../../lib/span-file.ts";

export interface SpanNode {
  readonly span: SpanRecord;
  /** The Parley service that ran it (see `serviceOf`). */
  readonly service: string;
  readonly children: SpanNode[];
}

export interface AckPath {
  /** `user/device` of the acknowledging device ("?" when the span does not say). */
  readonly device: string;
  /** delivered or read. */
  readonly kind: string;
  readonly ack: SpanRecord;
  readonly tree: SpanNode[];
}

export interface MessagePath {
  readonly messageId: string;
  readonly conversationId: string | undefined;
  readonly traceIds: readonly string[];
  /** The message's trace(s): normally one tree rooted at the edge's send span. */
  readonly tree: SpanNode[];
  /** `edge.push` spans: one per batch that carried the message. */
  readonly pushes: readonly SpanRecord[];
  readonly acks: readonly AckPath[];
  /** Nanoseconds since the epoch of the earliest span of the message's trace: offsets start here. */
  readonly origin: bigint;
}

const MESSAGE_ID = "parley.message_id";
const MESSAGE_IDS = "parley.message_ids";

function strings(value: AttributeValue | undefined): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === "string");
  return [];
}

const str = (value: AttributeValue | undefined): string | undefined =>
  typeof value === "string" ? value : undefined;

/**
 * The service a span belongs to, whatever process made it (in the embedded profile one process
 * makes them all): a server span's RPC service (`parley.sender.v1.SenderService` -> sender; the
 * EdgePushService is served by the edge), a consumer span's subscription (history, delivery), and
 * otherwise its parent's; a root with neither is the process's `service.name` without `parley-`.
 */
export function serviceOf(span: SpanRecord, parentService: string | undefined): string {
  const rpcService = str(span.attributes["rpc.service"]);
  if (span.kind === "SERVER" && rpcService !== undefined) {
    if (rpcService.endsWith(".EdgePushService")) return "edge";
    const match = /^parley\.([a-z_]+)\.v\d+\./.exec(rpcService);
    if (match?.[1] !== undefined) return match[1];
  }
  if (span.kind === "CONSUMER") {
    const subscription = str(span.attributes["messaging.destination.subscription.name"]);
    if (subscription !== undefined) return subscription;
  }
  if (parentService !== undefined) return parentService;
  if (span.scope === "parley.edge") return "edge";
  return span.service.replace(/^parley-/, "");
}

const start = (span: SpanRecord) => BigInt(span.startTimeUnixNano);
const byStart = (a: SpanNode, b: SpanNode) => {
  const d = start(a.span) - start(b.span);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
};

/** The spans of one or more traces as trees (a span whose parent is missing is a root). */
export function buildTrees(spans: readonly SpanRecord[]): SpanNode[] {
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map<string, SpanRecord[]>();
  const roots: SpanRecord[] = [];
  for (const span of spans) {
    if (span.parentSpanId === undefined || !ids.has(span.parentSpanId)) {
      roots.push(span);
      continue;
    }
    const list = children.get(span.parentSpanId) ?? [];
    list.push(span);
    children.set(span.parentSpanId, list);
  }
  const build = (span: SpanRecord, parentService: string | undefined): SpanNode => {
    const service = serviceOf(span, parentService);
    const node: SpanNode = {
      span,
      service,
      children: (children.get(span.spanId) ?? []).map((child) => build(child, service)),
    };
    node.children.sort(byStart);
    return node;
  };
  return roots.map((root) => build(root, undefined)).sort(byStart);
}

/** Every span of `traceIds`, once (a file may hold a span twice if two runs shared it). */
function spansOf(spans: readonly SpanRecord[], traceIds: ReadonlySet<string>): SpanRecord[] {
  const seen = new Set<string>();
  return spans.filter((s) => {
    if (!traceIds.has(s.traceId) || seen.has(`${s.traceId}/${s.spanId}`)) return false;
    seen.add(`${s.traceId}/${s.spanId}`);
    return true;
  });
}

/**
 * The path of `messageId` in `spans`, or undefined when no span names it (the message's trace was
 * not sampled, or its spans are elsewhere). The message's traces are those with a span whose
 * `parley.message_id` is the id (send, SendMessage, publish and process spans); its acks are the
 * spans of other traces linking to one of them (`parley.link.kind` acknowledged_message).
 */
export function findMessagePath(spans: readonly SpanRecord[], messageId: string): MessagePath | undefined {
  const traceIds = new Set(spans.filter((s) => s.attributes[MESSAGE_ID] === messageId).map((s) => s.traceId));
  if (traceIds.size === 0) return undefined;
  const own = spansOf(spans, traceIds);
  const origin = own.reduce((min, s) => (start(s) < min ? start(s) : min), start(own[0] as SpanRecord));
  const conversationId = own
    .map((s) => str(s.attributes["parley.conversation_id"]))
    .find((c) => c !== undefined);
  const pushes = own
    .filter((s) => s.name === "edge.push" && strings(s.attributes[MESSAGE_IDS]).includes(messageId))
    .sort((a, b) => (start(a) < start(b) ? -1 : 1));

  // An ack links to the message's trace; a link naming another message is another message's ack.
  const ackSpans = spans.filter(
    (s) =>
      !traceIds.has(s.traceId) &&
      s.links.some(
        (l) =>
          traceIds.has(l.traceId) &&
          l.attributes["parley.link.kind"] !== "stream" &&
          (l.attributes[MESSAGE_ID] === undefined || l.attributes[MESSAGE_ID] === messageId),
      ),
  );
  const acks: AckPath[] = [];
  const ackTraces = new Set<string>();
  for (const ack of ackSpans.sort((a, b) => (start(a) < start(b) ? -1 : 1))) {
    if (ackTraces.has(ack.traceId)) continue;
    ackTraces.add(ack.traceId);
    const user = str(ack.attributes["parley.user_id"]);
    const device = str(ack.attributes["parley.device_id"]);
    acks.push({
      device: user === undefined || device === undefined ? "?" : `${user}/${device}`,
      kind: str(ack.attributes["parley.receipt.kind"]) ?? "ack",
      ack,
      tree: buildTrees(spansOf(spans, new Set([ack.traceId]))),
    });
  }
  return {
    messageId,
    conversationId,
    traceIds: [...traceIds],
    tree: buildTrees(own),
    pushes,
    acks,
    origin,
  };
}

function ms(nanos: bigint): string {
  const value = Number(nanos) / 1e6;
  return value >= 1000 ? `${(value / 1000).toFixed(3)}s` : `${value.toFixed(1)}ms`;
}

const offset = (span: SpanRecord, origin: bigint) => `+${ms(start(span) - origin)}`;
const duration = (span: SpanRecord) => ms(BigInt(span.endTimeUnixNano) - start(span));

/** `parley.sender.v1.SenderService/SendMessage` -> `SenderService/SendMessage`. */
function shortName(name: string): string {
  return name.replace(/^parley\.[a-z_]+\.v\d+\./, "");
}

/** Attributes worth a glance on a tree line (ids and counts, never every attribute). */
function details(span: SpanRecord): string {
  const a = span.attributes;
  const parts: string[] = [];
  if (span.kind !== "INTERNAL") parts.push(span.kind.toLowerCase());
  const seq = a["parley.seq"];
  if (typeof seq === "number") parts.push(`seq ${seq}`);
  if (span.name === "edge.push") {
    parts.push(`${a["parley.push.pushed"] ?? 0}/${a["parley.device.count"] ?? 0} devices pushed`);
    for (const outcome of ["not_connected", "stale_route", "overloaded"]) {
      const n = a[`parley.push.${outcome}`];
      if (typeof n === "number" && n > 0) parts.push(`${n} ${outcome}`);
    }
  }
  const redelivered = a["messaging.pulsar.redelivery_count"];
  if (typeof redelivered === "number") parts.push(`redelivery ${redelivered}`);
  const status = a["rpc.grpc.status_code"];
  if (typeof status === "number" && status !== 0) parts.push(`grpc status ${status}`);
  const connectError = a["rpc.connect_rpc.error_code"];
  if (typeof connectError === "string") parts.push(connectError);
  if (span.status.code === "ERROR")
    parts.push(`ERROR${span.status.message ? `: ${span.status.message}` : ""}`);
  return parts.length === 0 ? "" : `  (${parts.join(", ")})`;
}

function renderTree(nodes: readonly SpanNode[], origin: bigint, indent: string, out: string[]): void {
  for (const node of nodes) {
    out.push(
      `${offset(node.span, origin).padStart(11)} ${duration(node.span).padStart(10)}  ${indent}${node.service.padEnd(10)} ${shortName(node.span.name)}${details(node.span)}`,
    );
    renderTree(node.children, origin, `${indent}  `, out);
  }
}

/** The path as text for a terminal: the message's tree, its pushes, then each device's ack. */
export function renderMessagePath(path: MessagePath): string {
  const out: string[] = [];
  const sender = path.tree
    .map((n) => n.span.attributes)
    .map((a) => [str(a["parley.sender.user_id"]), str(a["parley.sender.device_id"])])
    .find(([u, d]) => u !== undefined && d !== undefined);
  out.push(`message ${path.messageId}`);
  if (path.conversationId !== undefined) out.push(`conversation ${path.conversationId}`);
  if (sender !== undefined) out.push(`sent by ${sender[0]}/${sender[1]}`);
  out.push(`trace ${path.traceIds.join(", ")}`);
  out.push(`started ${new Date(Number(path.origin / 1_000_000n)).toISOString()}`);
  out.push("");
  out.push(`${"start".padStart(11)} ${"duration".padStart(10)}  service    span`);
  renderTree(path.tree, path.origin, "", out);

  out.push("");
  if (path.pushes.length === 0) {
    out.push("pushes: none recorded (no recipient device was connected, or delivery's spans are elsewhere)");
  } else {
    out.push("pushes (one edge.push span per batch):");
    for (const push of path.pushes) {
      const devices = strings(push.attributes["parley.device_ids"]);
      out.push(
        `  ${offset(push, path.origin)}  ${push.attributes["parley.push.pushed"] ?? 0}/${push.attributes["parley.device.count"] ?? 0} devices pushed${devices.length > 0 ? `: ${devices.join(", ")}` : ""}`,
      );
    }
  }

  out.push("");
  if (path.acks.length === 0) {
    out.push("acks: none recorded (no device acknowledged it through an edge that pushed it)");
  } else {
    out.push("acks (each its own trace, linked to the message's):");
    for (const ack of path.acks) {
      out.push(`  ${ack.device} ${ack.kind} at ${offset(ack.ack, path.origin)} (trace ${ack.ack.traceId})`);
      renderTree(ack.tree, path.origin, "    ", out);
    }
  }
  return `${out.join("\n")}\n`;
}
