// Issue 7, metrics and the trace CLI: the embedded mesh runs in this process with its Prometheus
// endpoint (lib/metrics.ts) scraped over HTTP, and its spans written to a JSON-lines file
// (PARLEY_TRACE_FILE) that `npm run trace` reads in a child process. One service also runs as its
// own process, to show every process serves its endpoint.
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { MetricsEndpoint } from "../lib/metrics.ts";
import { startMetricsEndpoint } from "../lib/metrics.ts";
import { parseSpanFile } from "../lib/span-file.ts";
import type { StopTelemetry } from "../lib/telemetry.ts";
import { startTelemetry } from "../lib/telemetry.ts";
import { repoRoot, startNodeProcess } from "./support/child-process.ts";
import type { Collected, TestMesh, TestUser } from "./support/mesh-users.ts";
import { collect, createGroup, createUser, pairwiseEnvelope, startTestMesh } from "./support/mesh-users.ts";

const workDir = mkdtempSync(join(tmpdir(), "parley-metrics-test-"));
const traceFile = join(workDir, "spans.jsonl");
let stopTelemetry: StopTelemetry | undefined;
let endpoint: MetricsEndpoint | undefined;
let mesh: TestMesh | undefined;
const savedTraceFile = process.env.PARLEY_TRACE_FILE;

beforeAll(async () => {
  process.env.PARLEY_TRACE_FILE = traceFile;
  stopTelemetry = startTelemetry({ serviceName: "parley-metrics-test" });
  endpoint = await startMetricsEndpoint({ host: "127.0.0.1", port: 0 });
  mesh = await startTestMesh();
});

afterAll(async () => {
  await mesh?.stop();
  await endpoint?.close();
  await stopTelemetry?.();
  if (savedTraceFile === undefined) delete process.env.PARLEY_TRACE_FILE;
  else process.env.PARLEY_TRACE_FILE = savedTraceFile;
  rmSync(workDir, { recursive: true, force: true });
});

/** One scrape: every sample as name, labels and value. */
interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const label of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1] as string] = (label[2] as string).replace(/\\(.)/g, "$1");
    }
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

async function scrape(url = endpoint?.url ?? ""): Promise<Sample[]> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  return parseExposition(await response.text());
}

/** The sum of the samples named `name` whose labels include `labels`. */
function total(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

async function until<T>(
  what: string,
  probe: () => Promise<T>,
  done: (value: T) => boolean,
  timeoutMs = 15_000,
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value)) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const SEND_MESSAGE = { rpc_system_name: "grpc", rpc_method: "parley.sender.v1.SenderService/SendMessage" };

describe("metrics and traces of a running mesh", () => {
  let alice: TestUser;
  let bob: TestUser;
  let carol: TestUser;
  let groupId: string;
  const seen = new Map<string, Collected>();
  /** Recipient devices of a group message: bob's two and carol's one. */
  const RECIPIENT_DEVICES = 3;

  beforeAll(async () => {
    if (mesh === undefined) throw new Error("no mesh");
    alice = await createUser(mesh, "alice", ["phone"]);
    bob = await createUser(mesh, "bob", ["phone", "laptop"]);
    carol = await createUser(mesh, "carol", ["phone"]);
    groupId = await createGroup(alice, [bob, carol], "measured");
    for (const device of [...bob.devices, ...carol.devices]) {
      seen.set(`${device.userId}/${device.deviceId}`, collect(device.client));
    }
    await Promise.all([alice, bob, carol].flatMap((u) => u.devices.map((d) => d.client.connect())));
  });

  afterAll(async () => {
    await Promise.all([alice, bob, carol].flatMap((u) => u?.devices.map((d) => d.client.close()) ?? []));
  });

  it("serves Prometheus metrics whose latency histograms and RED counters count the messages sent", async () => {
    const streams = await until(
      "every device's stream in the gauge",
      () => scrape(),
      (s) => total(s, "parley_edge_streams") === 4,
    );
    expect(
      total(streams, "parley_edge_stream_opens_total", { parley_stream_kind: "session" }),
    ).toBeGreaterThanOrEqual(4);

    const before = await scrape();
    const N = 5;
    for (let i = 0; i < N; i++) {
      await alice.primary.client.send({
        conversationId: groupId,
        envelope: pairwiseEnvelope(alice.primary, [alice, bob, carol], `measured ${i}`),
      });
    }
    for (const collected of seen.values()) await collected.untilMessages(N, groupId);

    const pushed = RECIPIENT_DEVICES * N;
    const count = (samples: Sample[], name: string) => total(samples, name) - total(before, name);
    // Every recipient device acks each message (the SDK's auto-ack) once it was shown.
    const after = await until(
      "the push and ack latency histograms to count every delivery",
      () => scrape(),
      (s) =>
        count(s, "parley_message_push_latency_count") >= pushed &&
        count(s, "parley_message_ack_latency_count") >= pushed,
    );
    expect(count(after, "parley_message_push_latency_count")).toBe(pushed);
    expect(count(after, "parley_message_ack_latency_count")).toBe(pushed);
    expect(
      total(after, "parley_message_ack_latency_count", { parley_receipt_kind: "delivered" }) -
        total(before, "parley_message_ack_latency_count", { parley_receipt_kind: "delivered" }),
    ).toBe(pushed);
    // Both ends online on one machine: every push well within the 10 s bucket.
    const within10s = (s: Sample[]) => total(s, "parley_message_push_latency_bucket", { le: "10" });
    expect(within10s(after) - within10s(before)).toBe(pushed);

    // RED of SendMessage: the sender's server side and the edge's client side, all OK.
    const sendOk = { ...SEND_MESSAGE, rpc_status_code: "OK" };
    const diff = (name: string, labels: Record<string, string>) =>
      total(after, name, labels) - total(before, name, labels);
    expect(diff("rpc_server_call_duration_count", sendOk)).toBe(N);
    expect(diff("rpc_client_call_duration_count", sendOk)).toBe(N);
    expect(diff("rpc_server_call_duration_count", SEND_MESSAGE)).toBe(N);
    expect(diff("rpc_server_call_duration_sum", sendOk)).toBeGreaterThan(0);
    // Delivery's own counters: one fan-out per message, every recipient device pushed.
    expect(diff("parley_delivery_fanout_count", { parley_event_kind: "message" })).toBe(N);
    expect(diff("parley_delivery_pushes_total", { parley_push_outcome: "pushed" })).toBeGreaterThanOrEqual(
      pushed,
    );

    // Nothing left unacknowledged on chat.messages once history stored them all.
    const drained = await until(
      "history's backlog on chat.messages to drain",
      () => scrape(),
      (s) =>
        s.some(
          (x) =>
            x.name === "parley_broker_backlog" &&
            x.labels.messaging_destination_name === "chat.messages" &&
            x.labels.messaging_destination_subscription_name === "history" &&
            x.value === 0,
        ),
    );
    expect(total(drained, "process_memory_usage")).toBeGreaterThan(0);
    // Bounded labels: no user, device, conversation or message id anywhere.
    const exposition = await (await fetch(endpoint?.url ?? "")).text();
    for (const id of [groupId, "alice", "bob", "carol"]) expect(exposition).not.toContain(id);
  });

  it("counts rate-limit rejections by limiter", async () => {
    const metric = "parley_rate_limit_rejections_total";
    const typing = { parley_rate_limit_name: "typing" };
    const before = total(await scrape(), metric, typing);
    let refused = 0;
    // Delivery allows a burst of 10 typing updates per device, then one a second.
    for (let i = 0; i < 14; i++) {
      try {
        await carol.primary.raw.session.setTyping({
          typing: { conversationId: groupId, typing: i % 2 === 0 },
        });
      } catch (err) {
        if (ConnectError.from(err).code !== Code.ResourceExhausted) throw err;
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(0);
    expect(total(await scrape(), metric, typing) - before).toBe(refused);
  });

  it("`npm run trace` prints the path of a message and every device's ack from the span file", async () => {
    const sent = await alice.primary.client.send({
      conversationId: groupId,
      envelope: pairwiseEnvelope(alice.primary, [alice, bob, carol], "traced"),
      forceTrace: true,
    });
    const messageId = sent.messageId;
    // The acks reach the file after the message does: wait until each device's ack span is there.
    const devices = [...bob.devices, ...carol.devices].map((d) => `${d.userId}/${d.deviceId}`);
    await until(
      "each recipient's ack span in the trace file",
      async () => (existsSync(traceFile) ? parseSpanFile(readFileSync(traceFile, "utf8")) : []),
      (spans) => {
        const traceIds = new Set(
          spans.filter((s) => s.attributes["parley.message_id"] === messageId).map((s) => s.traceId),
        );
        const acked = spans
          .filter((s) => s.links.some((l) => traceIds.has(l.traceId)))
          .map((s) => `${s.attributes["parley.user_id"]}/${s.attributes["parley.device_id"]}`);
        return devices.every((d) => acked.includes(d));
      },
    );

    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["tools/trace/trace.ts", messageId, "--file", traceFile],
      { cwd: repoRoot },
    );
    const lines = stdout.split("\n");
    expect(lines[0]).toBe(`message ${messageId}`);
    expect(stdout).toContain(`conversation ${groupId}`);
    expect(stdout).toContain("sent by alice/phone");
    // The hops in order, each in its service.
    const hops = [
      /edge\s+SessionService\/Session send/,
      /edge\s+SenderService\/SendMessage\s+\(client\)/,
      /sender\s+SenderService\/SendMessage\s+\(server\)/,
      /sender\s+publish chat\.messages\s+\(producer\)/,
      /history\s+process chat\.messages\s+\(consumer, seq \d+\)/,
      /history\s+publish chat\.deliveries\s+\(producer\)/,
      /delivery\s+process chat\.deliveries\s+\(consumer/,
      /delivery\s+EdgePushService\/PushBatch\s+\(client\)/,
      /edge\s+EdgePushService\/PushBatch\s+\(server\)/,
      /edge\s+edge\.push\s+\(\d\/\d devices pushed\)/,
    ];
    let at = 0;
    for (const hop of hops) {
      const index = lines.findIndex((line, i) => i >= at && hop.test(line));
      expect(index, `${hop} after line ${at} in:\n${stdout}`).toBeGreaterThanOrEqual(at);
      at = index;
    }
    // Every line of the tree has an offset and a duration.
    expect(lines.filter((l) => /^\s+\+\d+\.\d+m?s\s+\d+\.\d+m?s\s+\S/.test(l)).length).toBeGreaterThanOrEqual(
      hops.length,
    );
    for (const device of devices) {
      expect(stdout).toMatch(new RegExp(`^  ${device} delivered at \\+\\d`, "m"));
    }
    expect(stdout).toMatch(/history\s+HistoryService\/RecordAcknowledgements delivered\s+\(server\)/);

    // An unknown id: exit code 1 and a hint on stderr.
    const unknown = await promisify(execFile)(
      process.execPath,
      ["tools/trace/trace.ts", "0190e8f4-1c7b-7000-8000-000000000000", "--file", traceFile],
      { cwd: repoRoot },
    ).catch((err: { code: number; stderr: string }) => err);
    expect("code" in unknown && unknown.code).toBe(1);
    expect("stderr" in unknown ? unknown.stderr : "").toContain("no span names message");
  });
});

describe("a service in its own process", () => {
  it("serves its metrics at PARLEY_METRICS_HOST:PARLEY_METRICS_PORT", async () => {
    const port = await freePort();
    const dataDir = join(workDir, "sender-data");
    const sender = startNodeProcess("services/sender/main.ts", {
      PARLEY_SENDER_PORT: "0",
      PARLEY_DATA_DIR: dataDir,
      PARLEY_METRICS_PORT: String(port),
      PARLEY_TRACE_FILE: "",
    });
    try {
      const [, url] = await sender.waitFor(
        /"url":"(http:\/\/127\.0\.0\.1:\d+\/metrics)".*metrics endpoint listening/,
      );
      expect(url).toBe(`http://127.0.0.1:${port}/metrics`);
      const samples = await scrape(url);
      expect(total(samples, "process_memory_usage")).toBeGreaterThan(0);
    } finally {
      expect(await sender.stop()).toBe(0);
    }
  });
});

/** A port nobody listens on right now (the OS picks it; the child binds it a moment later). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
