// The Jaeger source against a local HTTP server answering the query API's JSON (the shape the
// Jaeger UI reads from /api/services and /api/traces), as Jaeger stores OTLP spans: links as
// FOLLOWS_FROM references, kind and status as tags, arrays as JSON text.
import type { Server } from "node:http";
import { createServer } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import type { JaegerTrace } from "./jaeger.ts";
import { fetchFromJaeger, fromJaegerTrace } from "./jaeger.ts";
import { findMessagePath } from "./message-path.ts";

const MESSAGE = "0190e8f4-1c7b-7000-8000-000000000001";
const T0 = 1_700_000_000_000_000; // µs

const messageTrace: JaegerTrace = {
  traceID: "0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".slice(1), // Jaeger may drop a leading zero
  processes: { p1: { serviceName: "parley-edge" }, p2: { serviceName: "parley-sender" } },
  spans: [
    {
      traceID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      spanID: "1111111111111111",
      operationName: "parley.edge.v1.SessionService/Session send",
      startTime: T0,
      duration: 30_000,
      processID: "p1",
      tags: [
        { key: "span.kind", type: "string", value: "server" },
        { key: "rpc.service", type: "string", value: "parley.edge.v1.SessionService" },
        { key: "parley.message_id", type: "string", value: MESSAGE },
        { key: "parley.conversation_id", type: "string", value: "conv" },
        { key: "otel.scope.name", type: "string", value: "parley.edge" },
      ],
    },
    {
      traceID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      spanID: "2222222222222222",
      operationName: "edge.push",
      references: [
        { refType: "CHILD_OF", traceID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", spanID: "1111111111111111" },
      ],
      startTime: T0 + 10_000,
      duration: 500,
      processID: "p1",
      tags: [
        { key: "parley.message_ids", type: "string", value: JSON.stringify([MESSAGE]) },
        { key: "parley.push.pushed", type: "int64", value: 1 },
        { key: "otel.status_code", type: "string", value: "ERROR" },
        { key: "otel.status_description", type: "string", value: "boom" },
      ],
      logs: [{ timestamp: T0 + 10_100, fields: [{ key: "event", type: "string", value: "exception" }] }],
    },
  ],
};

const ackTrace: JaegerTrace = {
  traceID: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
  processes: { p1: { serviceName: "parley-edge" } },
  spans: [
    {
      traceID: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
      spanID: "3333333333333333",
      operationName: "parley.edge.v1.SessionService/Session ack",
      references: [
        { refType: "FOLLOWS_FROM", traceID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", spanID: "1111111111111111" },
      ],
      startTime: T0 + 40_000,
      duration: 2_000,
      processID: "p1",
      tags: [
        { key: "span.kind", type: "string", value: "server" },
        { key: "parley.user_id", type: "string", value: "bob" },
        { key: "parley.device_id", type: "string", value: "phone" },
        { key: "parley.receipt.kind", type: "string", value: "delivered" },
      ],
    },
  ],
};

/** An ack of another message in the same conversation: no reference to our trace. */
const otherAck: JaegerTrace = {
  ...ackTrace,
  traceID: "cccccccccccccccccccccccccccccccc",
  spans: ackTrace.spans.map((s) => ({ ...s, traceID: "cccccccccccccccccccccccccccccccc", references: [] })),
};

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

async function fakeJaeger(): Promise<{ url: string; requests: URL[] }> {
  const requests: URL[] = [];
  server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://jaeger");
    requests.push(url);
    const reply = (data: unknown) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ data }));
    };
    if (url.pathname === "/api/services") return reply(["jaeger-all-in-one", "parley-edge", "parley-sender"]);
    if (url.pathname !== "/api/traces") {
      res.writeHead(404);
      res.end();
      return;
    }
    const tags = JSON.parse(url.searchParams.get("tags") ?? "{}") as Record<string, string>;
    if (tags["parley.message_id"] === MESSAGE && url.searchParams.get("service") === "parley-edge") {
      return reply([messageTrace]);
    }
    if (
      tags["parley.conversation_id"] === "conv" &&
      url.searchParams.get("service") === "parley-edge" &&
      url.searchParams.get("operation") === "parley.edge.v1.SessionService/Session ack"
    ) {
      return reply([ackTrace, otherAck]);
    }
    return reply([]);
  });
  const listening = server;
  await new Promise<void>((resolve) => listening.listen(0, "127.0.0.1", resolve));
  const address = listening.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return { url: `http://127.0.0.1:${port}/`, requests };
}

describe("spans from Jaeger", () => {
  it("converts Jaeger's spans back: ids padded, parent, kind, status, arrays, links, events", () => {
    const [send, push] = fromJaegerTrace(messageTrace);
    expect(send).toMatchObject({
      traceId: "0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      kind: "SERVER",
      service: "parley-edge",
      scope: "parley.edge",
      startTimeUnixNano: `${T0}000`,
      endTimeUnixNano: `${T0 + 30_000}000`,
    });
    expect(send?.parentSpanId).toBeUndefined();
    expect(send?.attributes["span.kind"]).toBeUndefined();
    expect(push).toMatchObject({
      parentSpanId: "1111111111111111",
      kind: "INTERNAL",
      status: { code: "ERROR", message: "boom" },
      attributes: { "parley.message_ids": [MESSAGE], "parley.push.pushed": 1 },
      links: [],
      events: [{ name: "exception", timeUnixNano: `${T0 + 10_100}000` }],
    });
  });

  it("finds the message's trace by its id and the acks referencing it, searching Parley's services only", async () => {
    const jaeger = await fakeJaeger();
    const spans = await fetchFromJaeger(jaeger.url, MESSAGE, { lookback: "1h" });
    const path = findMessagePath(spans, MESSAGE);
    expect(path?.traceIds).toEqual(["0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]);
    expect(path?.pushes).toHaveLength(1);
    expect(path?.acks.map((a) => [a.device, a.kind, a.ack.traceId])).toEqual([
      ["bob/phone", "delivered", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
    ]);
    const searched = jaeger.requests.filter((r) => r.pathname === "/api/traces");
    expect(new Set(searched.map((r) => r.searchParams.get("service")))).toEqual(
      new Set(["parley-edge", "parley-sender"]),
    );
    expect(searched[0]?.searchParams.get("lookback")).toBe("1h");
    const ackSearch = searched.find((r) => r.searchParams.get("operation") !== null);
    expect(Number(ackSearch?.searchParams.get("start"))).toBe(T0);
  });

  it("says nothing was found rather than failing when no trace names the message", async () => {
    const jaeger = await fakeJaeger();
    expect(await fetchFromJaeger(jaeger.url, "0190e8f4-1c7b-7000-8000-00000000ffff")).toEqual([]);
  });
});
