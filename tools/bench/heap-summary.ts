// What grew between two V8 heap snapshots (`npm run bench -- s3 --heap-snapshot` writes them),
// by object kind, divided by how many streams the growth is for: the self sizes Chrome DevTools'
// "Comparison" view shows, without loading a snapshot of a GB heap into a browser.
//
//   node tools/bench/heap-summary.ts BEFORE.heapsnapshot AFTER.heapsnapshot [--per N] [--top 40]
//
// A snapshot's JSON can pass the longest string V8 allows, so the node table is read as a
// stream of numbers and only the string table is parsed whole.
import { createReadStream } from "node:fs";
import { parseArgs } from "node:util";

interface KindTotals {
  count: number;
  bytes: number;
}

interface HeapSummary {
  readonly kinds: Map<string, KindTotals>;
  readonly nodes: number;
  readonly bytes: number;
}

interface SnapshotMeta {
  readonly node_fields: readonly string[];
  readonly node_types: readonly [readonly string[], ...unknown[]];
}

/** Kinds the way DevTools groups them: objects by constructor, the rest by V8's node type. */
function kindOf(type: string, name: string): string {
  switch (type) {
    case "object":
    case "native":
      return name;
    case "closure":
      return `(closure) ${name || "(anonymous)"}`;
    case "string":
    case "concatenated string":
    case "sliced string":
      return "(string)";
    case "code":
      return "(compiled code)";
    case "array":
    case "hidden":
    case "object shape":
      return `(${type}) ${name.replace(/\d+/g, "#")}`;
    default:
      return `(${type})`;
  }
}

export async function summarize(path: string): Promise<HeapSummary> {
  let head = "";
  let meta: SnapshotMeta | undefined;
  let phase: "head" | "nodes" | "between" | "strings" = "head";
  let fields = 0;
  let typeField = 0;
  let nameField = 0;
  let sizeField = 0;
  let field = 0;
  let current = -1;
  let type = 0;
  let name = 0;
  // (type, name) -> totals, keyed by number while the names are not read yet.
  const byTypeAndName = new Map<number, KindTotals>();
  let nodes = 0;
  let totalBytes = 0;
  let between = "";
  const stringsText: string[] = [];

  const takeNumber = (value: number) => {
    if (field === typeField) type = value;
    else if (field === nameField) name = value;
    else if (field === sizeField) {
      const key = name * 64 + type;
      const totals = byTypeAndName.get(key);
      if (totals === undefined) byTypeAndName.set(key, { count: 1, bytes: value });
      else {
        totals.count++;
        totals.bytes += value;
      }
      nodes++;
      totalBytes += value;
    }
    field = (field + 1) % fields;
  };

  const readNodes = (text: string, from: number): number => {
    for (let i = from; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c >= 48 && c <= 57) current = (current < 0 ? 0 : current * 10) + (c - 48);
      else {
        if (current >= 0) takeNumber(current);
        current = -1;
        if (c === 93 /* ] */) return i + 1;
      }
    }
    return -1;
  };

  for await (const chunk of createReadStream(path, { encoding: "utf8", highWaterMark: 1 << 20 })) {
    let text = chunk as string;
    if (phase === "head") {
      head += text;
      const at = head.indexOf('"nodes":[');
      if (at < 0) continue;
      const snapshotStart = head.indexOf('"snapshot":');
      const metaJson = head.slice(snapshotStart + '"snapshot":'.length, head.lastIndexOf("}", at) + 1);
      meta = (JSON.parse(metaJson) as { meta: SnapshotMeta }).meta;
      fields = meta.node_fields.length;
      typeField = meta.node_fields.indexOf("type");
      nameField = meta.node_fields.indexOf("name");
      sizeField = meta.node_fields.indexOf("self_size");
      text = head.slice(at + '"nodes":['.length);
      head = "";
      phase = "nodes";
    }
    if (phase === "nodes") {
      const end = readNodes(text, 0);
      if (end < 0) continue;
      text = text.slice(end);
      phase = "between";
    }
    if (phase === "between") {
      // Edges and the rest lie between; only the last bytes are kept to find the string table.
      between = between.slice(-16) + text;
      const at = between.indexOf('"strings":[');
      if (at < 0) continue;
      text = between.slice(at + '"strings":'.length);
      between = "";
      phase = "strings";
    }
    stringsText.push(text);
  }
  if (meta === undefined || phase !== "strings") throw new Error(`${path}: not a V8 heap snapshot`);
  const stringsJson = stringsText.join("").trimEnd();
  // The file ends with the string table's "]" and the document's "}".
  const strings = JSON.parse(stringsJson.slice(0, stringsJson.lastIndexOf("]") + 1)) as string[];
  const types = meta.node_types[0];
  const kinds = new Map<string, KindTotals>();
  for (const [key, totals] of byTypeAndName) {
    const kind = kindOf(types[key % 64] ?? "?", strings[Math.floor(key / 64)] ?? "?");
    const sum = kinds.get(kind);
    if (sum === undefined) kinds.set(kind, { ...totals });
    else {
      sum.count += totals.count;
      sum.bytes += totals.bytes;
    }
  }
  return { kinds, nodes, bytes: totalBytes };
}

export interface KindGrowth {
  readonly kind: string;
  readonly count: number;
  readonly bytes: number;
}

/** Growth from `before` to `after` by kind, largest first. */
export function growth(before: HeapSummary, after: HeapSummary): KindGrowth[] {
  const rows: KindGrowth[] = [];
  for (const kind of new Set([...before.kinds.keys(), ...after.kinds.keys()])) {
    const a = before.kinds.get(kind) ?? { count: 0, bytes: 0 };
    const b = after.kinds.get(kind) ?? { count: 0, bytes: 0 };
    rows.push({ kind, count: b.count - a.count, bytes: b.bytes - a.bytes });
  }
  return rows.sort((x, y) => y.bytes - x.bytes);
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { per: { type: "string" }, top: { type: "string" } },
  });
  const [beforePath, afterPath] = positionals;
  if (beforePath === undefined || afterPath === undefined) {
    console.error("usage: node tools/bench/heap-summary.ts BEFORE AFTER [--per N] [--top 40]");
    process.exit(2);
  }
  const per = Number(values.per ?? 1);
  const top = Number(values.top ?? 40);
  const [before, after] = await Promise.all([summarize(beforePath), summarize(afterPath)]);
  const rows = growth(before, after);
  const total = after.bytes - before.bytes;
  console.log(
    `self size ${(before.bytes / 2 ** 20).toFixed(1)} -> ${(after.bytes / 2 ** 20).toFixed(1)} MB; ` +
      `growth ${(total / per / 1024).toFixed(2)} KB and ${((after.nodes - before.nodes) / per).toFixed(1)} objects per ${per === 1 ? "snapshot" : "unit"} (--per ${per})`,
  );
  console.log("| kind | objects per unit | bytes per unit | share of growth |");
  console.log("| --- | --- | --- | --- |");
  for (const row of rows.slice(0, top)) {
    console.log(
      `| ${row.kind.replace(/\|/g, "\\|").slice(0, 80)} | ${(row.count / per).toFixed(2)} | ${(row.bytes / per).toFixed(0)} | ${((100 * row.bytes) / total).toFixed(1)}% |`,
    );
  }
}

if (import.meta.main) await main();
