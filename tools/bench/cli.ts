// `npm run bench -- <scenario> [options]`: the load generator of issue 8. Runs the baselines (raw,
// relay) and then Parley, each in a child process of its own, and writes a JSON result, a Markdown
// table and an SVG chart under bench/results/. `--help` lists scenarios and options.
import { loadavg } from "node:os";
import { relative } from "node:path";
import type { BenchOptions } from "./options.ts";
import { parseBenchOptions, UsageError } from "./options.ts";
import { createProgress } from "./progress.ts";
import type { BenchReport } from "./report.ts";
import { machineInfo, writeReport } from "./report.ts";
import { runFanout } from "./scenarios/fanout.ts";
import { runIdle } from "./scenarios/idle.ts";
import { runKnee } from "./scenarios/knee.ts";
import { runReconnect } from "./scenarios/reconnect.ts";
import { runSurge } from "./scenarios/surge.ts";

export async function runBench(options: BenchOptions): Promise<{ base: string; report: BenchReport }> {
  const progress = createProgress();
  const startedAt = new Date();
  const loadStart = loadavg();
  progress.note(
    `bench ${options.scenario} (${options.profile}${options.quick ? ", quick" : ""}); load average ${loadStart.map((l) => l.toFixed(2)).join(" ")}`,
  );
  const report = await (() => {
    switch (options.scenario) {
      case "s1":
      case "push":
        return runKnee(options, progress);
      case "s2":
        return runFanout(options, progress);
      case "s3":
        return runIdle(options, progress);
      case "s4":
        return runSurge(options, progress);
      case "s5":
        return runReconnect(options, progress);
    }
  })();
  const base = writeReport(report, options, machineInfo(loadStart), startedAt);
  progress.note(`results: ${relative(process.cwd(), base)}.{json,md,svg}`);
  for (const goal of report.goals) {
    progress.note(
      `  ${goal.goal}: ${goal.reached} (target ${goal.target}) ${goal.met === false ? "MISSED" : ""}`,
    );
  }
  for (const [name, value] of Object.entries(report.ratios)) {
    if (value !== undefined) progress.note(`  ${name}: ${value.toFixed(3)}`);
  }
  return { base, report };
}

if (import.meta.main) {
  let options: BenchOptions;
  try {
    options = parseBenchOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof UsageError ? 64 : 1);
  }
  try {
    await runBench(options);
    process.exit(0);
  } catch (err) {
    process.stderr.write(
      `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  }
}
