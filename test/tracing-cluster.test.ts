// Issue 7, traces in the cluster profile: one group message's trace across the processes, from the
// edge's send through sender, both Pulsar hops, history and delivery to the pushes on both edge
// hosts, and each recipient device's ack (its own trace, linked to the message's). Every process
// writes its spans to a file of its own (PARLEY_TRACE_FILE), so the test knows which process made
// each span; `npm run trace` then reads the same spans back. Needs the engines (PARLEY_ENGINES=1).
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { AttributeValue } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ParleyClient } from "../clients/ts/index.ts";
import { ParleyClientError } from "../clients/ts/index.ts";
import { engineTargets } from "../lib/engines.ts";
import type { SpanKindName, SpanRecord } from "../lib/span-file.ts";
import { parseSpanFile } from "../lib/span-file.ts";
import { repoRoot } from "../tools/cluster/cluster.ts";
import type { ClusterTestMesh } from "./support/cluster-mesh.ts";
import { startClusterTestMesh } from "./support/cluster-mesh.ts";
import type { Collected, TestDevice, TestUser } from "./support/mesh-users.ts";
import { collect, createGroup, createUser, pairwiseEnvelope } from "./support/mesh-users.ts";

const targets = engineTargets();

const SEND_SPAN = "parley.edge.v1.SessionService/Session send";
const ACK_SPAN = "parley.edge.v1.SessionService/Session ack";
const SEND_MESSAGE = "parley.sender.v1.SenderService/SendMessage";
const PUSH_BATCH = "parley.delivery.v1.EdgePushService/PushBatch";
const RECORD_DELIVERED = "parley.history.v1.HistoryService/RecordAcknowledgements delivered";

/** A span and the process whose file it was in (`sender`, `delivery-2`, `edge-1`...). */
type Found = SpanRecord & { readonly process: string };

function readSpans(files: Readonly<Record<string, string>>): Found[] {
  return Object.entries(files).flatMap(([processName, path]) =>
    existsSync(path)
      ? parseSpanFile(readFileSync(path, "utf8")).map((span) => ({ ...span, process: processName }))
      : [],
  );
}

/** Every string in an attribute value (arrays flattened). */
function strings(value: AttributeValue | undefined): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === "string");
  return [];
}

function one<T>(found: readonly T[], what: string): T {
  expect(found, what).toHaveLength(1);
  return found[0] as T;
}

async function until(what: string, predicate: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

const address = (device: TestDevice) => `${device.userId}/${device.deviceId}`;

/** The file a process writes: `edge-2` and `delivery-1` are replicas of `parley-edge`, `parley-delivery`. */
const serviceOfProcess = (processName: string) => `parley-${processName.replace(/-\d+$/, "")}`;

describe.runIf(targets)("tracing a group message across the cluster's processes", () => {
  let mesh: ClusterTestMesh | undefined;
  const clients: ParleyClient[] = [];

  beforeAll(async () => {
    mesh = await startClusterTestMesh({
      connections: 2,
      traceFiles: true,
      // Nothing is sampled by ratio: what a file holds is there because of force_trace alone.
      env: { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0" },
    });
  });

  afterAll(async () => {
    await Promise.allSettled(clients.map((client) => client.close()));
    await mesh?.stop();
  });

  it("joins every hop of one message in one trace, each span in the process that made it, and links every device's ack to it", async () => {
    if (mesh === undefined) throw new Error("no mesh");
    const { cluster, traceFiles } = mesh;
    const edgeProcesses = cluster.edgeUrls.map((_, i) => `edge-${i + 1}`);
    expect(edgeProcesses).toEqual(["edge-1", "edge-2"]);

    const alice = await createUser(mesh, "alice", ["phone", "laptop"]);
    const bob = await createUser(mesh, "bob", ["phone", "tablet"]);
    const carol = await createUser(mesh, "carol", ["phone"]);
    const dave = await createUser(mesh, "dave", ["desktop"]);
    const members: TestUser[] = [alice, bob, carol, dave];
    const groupId = await createGroup(alice, [bob, carol, dave], "traced across processes");

    // Each device on a chosen edge host: the sender on edge-1, its recipients on both, so the
    // message is pushed by both edges and bob's two devices sit on different hosts.
    const placement = new Map<string, string>([
      ["alice/phone", "edge-1"],
      ["alice/laptop", "edge-2"],
      ["bob/phone", "edge-1"],
      ["bob/tablet", "edge-2"],
      ["carol/phone", "edge-2"],
      ["dave/desktop", "edge-1"],
    ]);
    const transports = new Map<string, Transport>(
      cluster.edgeUrls.map((baseUrl, i) => [`edge-${i + 1}`, createGrpcTransport({ baseUrl })]),
    );
    const devices = members.flatMap((member) => member.devices);
    const sender = alice.primary;
    const recipients = devices.filter((device) => device !== sender);
    // Pushed: every recipient, and the sending device its echo (the seq, no ciphertext).
    const pushedDevices = [...recipients, sender];
    const edgeOf = (device: { userId: string; deviceId: string }) => {
      const edge = placement.get(`${device.userId}/${device.deviceId}`);
      if (edge === undefined) throw new Error(`no edge for ${device.userId}/${device.deviceId}`);
      return edge;
    };
    const clientOf = new Map<TestDevice, ParleyClient>();
    const seen = new Map<TestDevice, Collected>();
    for (const device of devices) {
      const client = device.newClient({ transport: transports.get(edgeOf(device)) as Transport });
      clients.push(client);
      clientOf.set(device, client);
      seen.set(device, collect(client));
    }
    await Promise.all([...clientOf.values()].map((client) => client.connect()));
    const senderClient = clientOf.get(sender) as ParleyClient;
    const showed = (device: TestDevice, messageId: string) =>
      (seen.get(device) as Collected).until(
        (c) => c.messages.some((m) => m.message.messageId === messageId),
        30_000,
        `${address(device)} showing ${messageId}`,
      );

    // An untraced message first: it waits out the sender's views of the new group and its devices
    // (fed through Pulsar, so a moment behind CreateGroup), and must leave no span anywhere.
    let untracedId: string | undefined;
    const viewsDeadline = Date.now() + 30_000;
    while (untracedId === undefined) {
      try {
        const sent = await senderClient.send({
          conversationId: groupId,
          envelope: pairwiseEnvelope(sender, members, "not traced"),
        });
        untracedId = sent.messageId;
      } catch (err) {
        const lagging =
          err instanceof ParleyClientError &&
          (err.reason === "CONVERSATION_NOT_FOUND" || err.reason === "DEVICE_LIST_MISMATCH");
        if (!lagging || Date.now() > viewsDeadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
    await Promise.all(recipients.map((device) => showed(device, untracedId as string)));

    const secret = "tracing-cluster-secret-plaintext";
    const sent = await senderClient.send({
      conversationId: groupId,
      envelope: pairwiseEnvelope(sender, members, secret),
      forceTrace: true,
    });
    const messageId = sent.messageId;
    await Promise.all(recipients.map((device) => showed(device, messageId)));

    // Every device's ack (its SDK acks once the message was shown) as its edge wrote it.
    const ackOf = (spans: readonly Found[], device: TestDevice) =>
      spans.filter(
        (s) =>
          s.name === ACK_SPAN &&
          s.attributes["parley.user_id"] === device.userId &&
          s.attributes["parley.device_id"] === device.deviceId &&
          s.links.some((l) => l.attributes["parley.message_id"] === messageId),
      );
    await until("every recipient device's ack linking to the message", () => {
      const spans = readSpans(traceFiles);
      return recipients.every((device) => ackOf(spans, device).length > 0);
    });

    // Stopping the processes flushes the rest of their spans (SIGTERM shuts telemetry down last).
    await Promise.all(clients.map((client) => client.close()));
    await cluster.stop();
    const spans = readSpans(traceFiles);

    // Every span in the file of a process of its own service.
    for (const span of spans) {
      expect(span.service, `${span.name} in ${span.process}'s file`).toBe(serviceOfProcess(span.process));
    }

    const send = one(
      spans.filter((s) => s.name === SEND_SPAN && s.attributes["parley.message_id"] === messageId),
      "the edge's send span",
    );
    const traceId = send.traceId;
    expect(send).toMatchObject({ kind: "SERVER", process: edgeOf(sender) });
    expect(send.attributes).toMatchObject({
      "parley.conversation_id": groupId,
      "parley.sender.user_id": sender.userId,
      "parley.sender.device_id": sender.deviceId,
      "parley.force_trace": true,
    });
    // A root: the stream's (unsampled) span is a link, not the parent.
    expect(send.parentSpanId).toBeUndefined();

    const inTrace = spans.filter((s) => s.traceId === traceId);
    const bySpanId = new Map(inTrace.map((s) => [s.spanId, s]));
    const find = (name: string, kind: SpanKindName) =>
      inTrace.filter((s) => s.name === name && s.kind === kind);
    const childOf = (span: Found, parent: Found) =>
      expect(
        span.parentSpanId,
        `${span.name} (${span.process}) under ${parent.name} (${parent.process})`,
      ).toBe(parent.spanId);
    const madeBy = (span: Found, process: string) =>
      expect(span.process, `the process of ${span.name} (${span.kind})`).toBe(process);

    // Edge -> sender over gRPC: the client span in the sender's edge, the server span in sender.
    const sendClient = one(find(SEND_MESSAGE, "CLIENT"), "SendMessage client span");
    const sendServer = one(find(SEND_MESSAGE, "SERVER"), "SendMessage server span");
    childOf(sendClient, send);
    childOf(sendServer, sendClient);
    madeBy(sendClient, edgeOf(sender));
    madeBy(sendServer, "sender");

    // chat.messages: sender's producer span, history's consumer span, across Pulsar.
    const published = one(find("publish chat.messages", "PRODUCER"), "publish chat.messages");
    const stored = one(find("process chat.messages", "CONSUMER"), "process chat.messages");
    childOf(published, sendServer);
    childOf(stored, published);
    madeBy(published, "sender");
    madeBy(stored, "history");
    expect(published.attributes).toMatchObject({
      "messaging.system": "pulsar",
      "messaging.destination.name": "chat.messages",
      "messaging.message.key": groupId,
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
    });
    expect(typeof published.attributes["messaging.message.id"]).toBe("string");
    expect(stored.attributes).toMatchObject({
      "messaging.operation.type": "process",
      "messaging.destination.subscription.name": "history",
      "messaging.message.id": published.attributes["messaging.message.id"],
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
      "parley.seq": 2,
    });

    // chat.deliveries: history's outbox relay continues its consumer span; one delivery worker
    // (of two, Key_Shared by conversation) consumes it.
    const relayed = one(find("publish chat.deliveries", "PRODUCER"), "publish chat.deliveries");
    const delivered = one(find("process chat.deliveries", "CONSUMER"), "process chat.deliveries");
    childOf(relayed, stored);
    childOf(delivered, relayed);
    madeBy(relayed, "history");
    expect(["delivery-1", "delivery-2"]).toContain(delivered.process);
    expect(delivered.attributes).toMatchObject({
      "messaging.destination.subscription.name": "delivery",
      "messaging.message.id": relayed.attributes["messaging.message.id"],
      "parley.message_id": messageId,
      "parley.conversation_id": groupId,
      "parley.seq": 2,
    });

    // One PushBatch per edge host holding recipients: the client span in that delivery worker,
    // the server span and its edge.push in the edge process, naming exactly that host's devices.
    const pushClients = find(PUSH_BATCH, "CLIENT");
    expect(pushClients).toHaveLength(edgeProcesses.length);
    for (const client of pushClients) {
      childOf(client, delivered);
      madeBy(client, delivered.process);
    }
    for (const edge of edgeProcesses) {
      const server = one(
        find(PUSH_BATCH, "SERVER").filter((s) => s.process === edge),
        `${edge}'s PushBatch server span`,
      );
      const client = bySpanId.get(server.parentSpanId ?? "");
      expect(client && pushClients.includes(client), `${edge}'s PushBatch under a delivery client span`).toBe(
        true,
      );
      const push = one(
        find("edge.push", "INTERNAL").filter((s) => s.process === edge),
        `${edge}'s edge.push span`,
      );
      childOf(push, server);
      const hosted = pushedDevices.filter((device) => edgeOf(device) === edge).map(address);
      expect(strings(push.attributes["parley.device_ids"]).sort(), `devices pushed by ${edge}`).toEqual(
        hosted.sort(),
      );
      expect(push.attributes["parley.push.pushed"]).toBe(hosted.length);
      expect(strings(push.attributes["parley.message_ids"])).toEqual([messageId]);
      expect(strings(push.attributes["parley.conversation_ids"])).toEqual([groupId]);
    }
    expect(find("edge.push", "INTERNAL")).toHaveLength(edgeProcesses.length);

    // One tree: every span of the trace hangs from the send span, in a process of the mesh.
    for (const span of inTrace) {
      if (span === send) continue;
      expect(
        bySpanId.has(span.parentSpanId ?? ""),
        `${span.name} (${span.process}) has its parent in the trace`,
      ).toBe(true);
    }
    const naming = spans.filter((s) => s.attributes["parley.message_id"] === messageId);
    expect(naming.length).toBeGreaterThanOrEqual(4);
    expect(new Set(naming.map((s) => s.traceId))).toEqual(new Set([traceId]));

    // Each recipient device's ack: its own trace in the edge holding the device, linked to the
    // message's trace, with history's record of it under it.
    const ackTraceOf = new Map<TestDevice, string>();
    for (const device of recipients) {
      const ack = one(ackOf(spans, device), `${address(device)}'s ack`);
      madeBy(ack, edgeOf(device));
      expect(ack.traceId).not.toBe(traceId);
      ackTraceOf.set(device, ack.traceId);
      expect(ack.attributes).toMatchObject({
        "parley.conversation_id": groupId,
        "parley.receipt.kind": "delivered",
      });
      const link = ack.links.find((l) => l.traceId === traceId);
      expect(link?.attributes).toMatchObject({
        "parley.message_id": messageId,
        "parley.link.kind": "acknowledged_message",
      });
      expect(bySpanId.has(link?.spanId ?? ""), `${address(device)}'s ack links to a span of the trace`).toBe(
        true,
      );
      const ackSpans = spans.filter((s) => s.traceId === ack.traceId);
      // The ack shared a RecordAcknowledgements call with other streams' acks (untraced at ratio
      // 0); history recorded it in a span of its own under the ack's.
      const recorded = one(
        ackSpans.filter((s) => s.name === RECORD_DELIVERED && s.kind === "SERVER"),
        `${address(device)}'s acknowledgement recorded by history`,
      );
      childOf(recorded, ack);
      madeBy(recorded, "history");
    }
    const ackTraces = new Set(ackTraceOf.values());
    expect(ackTraces.size).toBe(recipients.length);

    // Sampling held across processes: nothing but the traced message and its acks was recorded;
    // the untraced message left no span, no id and no link anywhere.
    for (const span of spans) {
      expect(
        span.traceId === traceId || ackTraces.has(span.traceId),
        `${span.name} (${span.process}) belongs to the message's trace or an ack's`,
      ).toBe(true);
      const ids = [
        ...strings(span.attributes["parley.message_id"]),
        ...strings(span.attributes["parley.message_ids"]),
        ...span.links.flatMap((l) => strings(l.attributes["parley.message_id"])),
      ];
      expect(ids, `${span.name} (${span.process})`).not.toContain(untracedId);
    }

    // The readable stand-in ciphertext is in no attribute, event or link of any file.
    for (const [processName, path] of Object.entries(traceFiles)) {
      if (existsSync(path))
        expect(readFileSync(path, "utf8"), `${processName}'s span file`).not.toContain(secret);
    }

    // The trace CLI on the same spans (one file, as one collector would hold them) names each hop.
    const allSpans = join(mesh.dataDir, "all-spans.jsonl");
    writeFileSync(
      allSpans,
      Object.values(traceFiles)
        .filter((path) => existsSync(path))
        .map((path) => readFileSync(path, "utf8"))
        .join(""),
    );
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["tools/trace/trace.ts", messageId, "--file", allSpans],
      { cwd: repoRoot },
    );
    // A line of the CLI's tree: offset, duration, then the service indented by the span's depth.
    const line = (depth: number, service: string, span: string, details: string) =>
      new RegExp(
        `^ *\\+\\S+ +\\S+ {${2 + 2 * depth}}${service} +${literal(span)} {2}\\(${literal(details)}\\)$`,
        "m",
      );
    const hops = [
      line(0, "edge", "SessionService/Session send", "server"),
      line(1, "edge", "SenderService/SendMessage", "client"),
      line(2, "sender", "SenderService/SendMessage", "server"),
      line(3, "sender", "publish chat.messages", "producer"),
      line(4, "history", "process chat.messages", "consumer, seq 2"),
      line(5, "history", "publish chat.deliveries", "producer"),
      line(6, "delivery", "process chat.deliveries", "consumer, seq 2"),
      line(7, "delivery", "EdgePushService/PushBatch", "client"),
      line(8, "edge", "EdgePushService/PushBatch", "server"),
    ];
    // The message's tree, then its pushes, then each ack's own tree (where receipts push too).
    const [tree = "", rest = ""] = stdout.split("\npushes (one edge.push span per batch):\n");
    const [pushed = "", acked = ""] = rest.split("\nacks (each its own trace, linked to the message's):\n");
    expect(tree).toContain(
      `message ${messageId}\nconversation ${groupId}\nsent by ${address(sender)}\ntrace ${traceId}\n`,
    );
    for (const hop of hops) expect(tree, "the message's tree in the trace CLI's output").toMatch(hop);
    expect(tree.match(/edge\.push {2}\(/g)).toHaveLength(edgeProcesses.length);
    const pushLines = pushed.split("\n").filter((line) => /^ {2}\+\S+ {2}\d\/\d devices pushed: /.test(line));
    expect(pushLines).toHaveLength(edgeProcesses.length);
    expect(pushLines.flatMap((line) => line.split(": ")[1]?.split(", ") ?? []).sort()).toEqual(
      pushedDevices.map(address).sort(),
    );
    for (const edge of edgeProcesses) {
      const count = pushedDevices.filter((device) => edgeOf(device) === edge).length;
      expect(tree).toMatch(line(9, "edge", "edge.push", `${count}/${count} devices pushed`));
    }
    for (const device of recipients) {
      const ack = [
        `^ {2}${address(device)} delivered at \\+\\S+ \\(trace ${ackTraceOf.get(device)}\\)`,
        line(2, "edge", "SessionService/Session ack", "server").source.slice(1, -1),
        line(3, "history", "HistoryService/RecordAcknowledgements delivered", "server").source.slice(1),
      ].join("\n");
      expect(acked, `the CLI lists ${address(device)}'s ack and history's record of it`).toMatch(
        new RegExp(ack, "m"),
      );
    }
    expect(stdout).not.toContain(untracedId);
  }, 180_000);
});
