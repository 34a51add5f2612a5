// Where a `--cpu-prof` profile spends its time: self time by function and by package or folder.
//
//   node tools/bench/profile-summary.ts bench/results/profiles/<file>.cpuprofile [--top 30]
//     [--window FROM-TO]   only samples in this monotonic-clock window (us), as the bench prints
//                          for each step: the step alone, without the setup before it
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { functionName: string; url: string; lineNumber: number };
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly startTime: number;
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** node_modules/<pkg> (scoped too), or the repository folder two levels deep, or node's own. */
export function bucketOf(url: string): string {
  if (url === "") return "(native / idle / gc)";
  const pkg = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (pkg?.[1] !== undefined) return pkg[1];
  if (url.startsWith("node:")) return url.replace(/^node:internal\/([^/]+).*/, "node:$1");
  const repo = url.match(/\/work\/[^/]+\/((?:[^/]+\/)?[^/]+)\//);
  return repo?.[1] ?? url;
}

export function summarize(profile: CpuProfile, window?: { from: number; to: number }) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let total = 0;
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    at += dt;
    if (window !== undefined && (at < window.from || at > window.to)) return;
    self.set(id, (self.get(id) ?? 0) + dt);
    total += dt;
  });
  const byFunction = new Map<string, number>();
  const byBucket = new Map<string, number>();
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (node === undefined) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const where =
      url === "" ? "" : ` ${url.replace(/^.*\/(node_modules\/|work\/[^/]+\/)/, "")}:${lineNumber + 1}`;
    const key = `${functionName || "(anonymous)"}${where}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const bucket = bucketOf(url);
    byBucket.set(bucket, (byBucket.get(bucket) ?? 0) + us);
  }
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { totalUs: total, byFunction: sorted(byFunction), byBucket: sorted(byBucket) };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: "string" }, window: { type: "string" } },
  });
  const file = positionals[0];
  if (file === undefined) {
    process.stderr.write("usage: node tools/bench/profile-summary.ts <file.cpuprofile> [--top N]\n");
    process.exit(64);
  }
  const top = Number(values.top ?? 30);
  const [from, to] = (values.window ?? "").split("-").map(Number);
  const window = from !== undefined && to !== undefined && to > from ? { from, to } : undefined;
  const { totalUs, byFunction, byBucket } = summarize(
    JSON.parse(readFileSync(file, "utf8")) as CpuProfile,
    window,
  );
  const pct = (us: number) => `${((100 * us) / totalUs).toFixed(1)}%`.padStart(6);
  process.stdout.write(`profile: ${(totalUs / 1e6).toFixed(1)} s sampled\n\nself time by package / folder\n`);
  for (const [name, us] of byBucket.slice(0, top)) process.stdout.write(`${pct(us)}  ${name}\n`);
  process.stdout.write("\nself time by function\n");
  for (const [name, us] of byFunction.slice(0, top)) process.stdout.write(`${pct(us)}  ${name}\n`);
}
