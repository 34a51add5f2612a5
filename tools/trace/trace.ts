// `npm run trace -- <message-id> [--file <spans.jsonl>] [--jaeger <url>] [--lookback 48h]`: prints
// a message's path and timings, from the send to every device's ack, for a terminal without a
// tracing UI. Spans come from the file the processes write with PARLEY_TRACE_FILE (the default
// source), or from a Jaeger query service. Exit code 0 when found, 1 when not, 2 on bad usage.
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import type { SpanRecord } from "../../lib/span-file.ts";
import { parseSpanFile } from "../../lib/span-file.ts";
import { fetchFromJaeger } from "./jaeger.ts";
import { findMessagePath, renderMessagePath } from "./message-path.ts";

const USAGE = `usage: npm run -s trace -- <message-id> [--file <path>] [--jaeger <url>] [--lookback 48h]

  --file <path>    spans written by processes started with PARLEY_TRACE_FILE=<path>
                   (default: $PARLEY_TRACE_FILE)
  --jaeger <url>   a Jaeger query service instead, e.g. http://127.0.0.1:16686
  --lookback <d>   how far back Jaeger is searched (default 48h)
`;

function fail(message: string, code: number): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

let parsed: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    allowPositionals: true,
    options: {
      file: { type: "string" },
      jaeger: { type: "string" },
      lookback: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
}
try {
  parsed = parse();
} catch (err) {
  fail(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`, 2);
}
const { values, positionals } = parsed;
if (values.help === true) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const messageId = positionals[0];
if (messageId === undefined || positionals.length > 1) fail(USAGE, 2);

let spans: SpanRecord[];
let source: string;
if (values.jaeger !== undefined) {
  source = values.jaeger;
  try {
    spans = await fetchFromJaeger(values.jaeger, messageId, {
      ...(values.lookback === undefined ? {} : { lookback: values.lookback }),
    });
  } catch (err) {
    fail(
      `could not query Jaeger at ${values.jaeger}: ${err instanceof Error ? err.message : String(err)}`,
      1,
    );
  }
} else {
  const file = values.file ?? process.env.PARLEY_TRACE_FILE;
  if (file === undefined || file === "") {
    fail(`no span source: pass --file, set PARLEY_TRACE_FILE, or pass --jaeger\n${USAGE}`, 2);
  }
  source = file;
  try {
    spans = parseSpanFile(await readFile(file, "utf8"));
  } catch (err) {
    fail(`could not read ${file}: ${err instanceof Error ? err.message : String(err)}`, 1);
  }
}

const path = findMessagePath(spans, messageId);
if (path === undefined) {
  fail(
    `no span names message ${messageId} in ${source} (${spans.length} spans read): its trace may not have been sampled (send with force_trace), or its spans were written elsewhere`,
    1,
  );
}
process.stdout.write(renderMessagePath(path));
