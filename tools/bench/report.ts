import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import type { BenchOptions } from "./options.ts";

export interface Table {
  readonly title: string;
  readonly headers: readonly string[];
  readonly rows: readonly (readonly (string | number)[])[];
}

export interface ChartSeries {
  readonly name: string;
  readonly points: readonly (readonly [number, number])[];
}

export interface Chart {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly ChartSeries[];
  readonly logY?: boolean;
  /** Bars instead of lines: one group per x (category index), one bar per series. */
  readonly bars?: { readonly categories: readonly string[] };
  /** A horizontal line (a target). */
  readonly threshold?: { readonly y: number; readonly label: string };
}

export interface Goal {
  readonly goal: string;
  readonly target: string;
  readonly reached: string;
  readonly met: boolean | undefined;
}

export interface BenchReport {
  readonly scenario: string;
  readonly title: string;
  readonly tables: readonly Table[];
  readonly charts: readonly Chart[];
  readonly goals: readonly Goal[];
  readonly ratios: Readonly<Record<string, number | undefined>>;
  readonly notes: readonly string[];
  /** Everything measured, for the JSON file. */
  readonly data: unknown;
}

export interface MachineInfo {
  readonly cpus: number;
  readonly model: string;
  readonly memoryGiB: number;
  readonly node: string;
  readonly kernel: string;
  readonly loadavgStart: readonly number[];
  readonly loadavgEnd: readonly number[];
}

export function machineInfo(loadavgStart: readonly number[]): MachineInfo {
  const list = cpus();
  return {
    cpus: list.length,
    model: list[0]?.model ?? "unknown",
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    kernel: release(),
    loadavgStart,
    loadavgEnd: loadavg(),
  };
}

const fmt = (v: string | number) =>
  typeof v === "number" ? (Number.isFinite(v) ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : "-") : v;

export function toMarkdown(
  report: BenchReport,
  machine: MachineInfo,
  date: string,
  options: BenchOptions,
): string {
  const lines: string[] = [];
  lines.push(`# ${report.title}`, "");
  lines.push(
    `${date}, profile ${options.profile}${options.quick ? " (--quick)" : ""}; ${machine.cpus} x ${machine.model}, ${machine.memoryGiB} GiB, Node ${machine.node}, Linux ${machine.kernel}; ` +
      `load average ${machine.loadavgStart.map((l) => l.toFixed(2)).join(" ")} at the start, ${machine.loadavgEnd.map((l) => l.toFixed(2)).join(" ")} at the end.`,
    "",
  );
  if (report.goals.length > 0) {
    lines.push("| goal | target | reached | met |", "| --- | --- | --- | --- |");
    for (const g of report.goals) {
      lines.push(
        `| ${g.goal} | ${g.target} | ${g.reached} | ${g.met === undefined ? "-" : g.met ? "yes" : "**no**"} |`,
      );
    }
    lines.push("");
  }
  const ratios = Object.entries(report.ratios);
  if (ratios.length > 0) {
    lines.push("| ratio | value |", "| --- | --- |");
    for (const [name, value] of ratios)
      lines.push(`| ${name} | ${value === undefined ? "-" : value.toFixed(3)} |`);
    lines.push("");
  }
  for (const table of report.tables) {
    lines.push(`## ${table.title}`, "");
    lines.push(`| ${table.headers.join(" | ")} |`, `| ${table.headers.map(() => "---").join(" | ")} |`);
    for (const row of table.rows) lines.push(`| ${row.map(fmt).join(" | ")} |`);
    lines.push("");
  }
  if (report.notes.length > 0) {
    lines.push("## Notes", "");
    for (const note of report.notes) lines.push(`- ${note}`);
    lines.push("");
  }
  return lines.join("\n");
}

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** One SVG with every chart stacked: hand-written, no dependency. */
export function toSvg(report: BenchReport): string {
  const width = 760;
  const panel = 300;
  const height = Math.max(1, report.charts.length) * panel + 30;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">${esc(report.title)}</text>`,
  ];
  for (const [i, chart] of report.charts.entries())
    parts.push(chartSvg(chart, 0, 30 + i * panel, width, panel));
  parts.push("</svg>");
  return parts.join("\n");
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function chartSvg(chart: Chart, x0: number, y0: number, w: number, h: number): string {
  const left = x0 + 70;
  const right = x0 + w - 150;
  const top = y0 + 24;
  const bottom = y0 + h - 40;
  const out: string[] = [`<text x="${left}" y="${y0 + 14}" font-weight="bold">${esc(chart.title)}</text>`];
  const all = chart.series.flatMap((s) => s.points);
  const ys = all.map(([, y]) => y).filter((y) => Number.isFinite(y) && (!chart.logY || y > 0));
  if (chart.threshold !== undefined) ys.push(chart.threshold.y);
  const yMaxRaw = Math.max(...ys, 0);
  const yMinLog = Math.max(1e-3, Math.min(...ys.filter((y) => y > 0), chart.threshold?.y ?? Infinity));
  const logMin = Math.floor(Math.log10(yMinLog));
  const logMax = Math.ceil(Math.log10(Math.max(yMaxRaw, yMinLog * 10)));
  const yMax = niceMax(yMaxRaw);
  const yPos = (y: number) => {
    if (chart.logY) {
      const v = Math.log10(Math.max(y, 10 ** logMin));
      return bottom - ((v - logMin) / (logMax - logMin)) * (bottom - top);
    }
    return bottom - (y / yMax) * (bottom - top);
  };
  // Axes and y ticks.
  out.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#333"/>`);
  out.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="#333"/>`);
  const ticks = chart.logY
    ? Array.from({ length: logMax - logMin + 1 }, (_, i) => 10 ** (logMin + i))
    : Array.from({ length: 6 }, (_, i) => (yMax * i) / 5);
  for (const t of ticks) {
    const y = yPos(t);
    out.push(`<line x1="${left}" y1="${y}" x2="${right}" y2="${y}" stroke="#eee"/>`);
    out.push(`<text x="${left - 6}" y="${y + 4}" text-anchor="end">${esc(short(t))}</text>`);
  }
  out.push(
    `<text x="${x0 + 14}" y="${(top + bottom) / 2}" transform="rotate(-90 ${x0 + 14} ${(top + bottom) / 2})" text-anchor="middle">${esc(chart.yLabel)}</text>`,
  );
  out.push(
    `<text x="${(left + right) / 2}" y="${bottom + 32}" text-anchor="middle">${esc(chart.xLabel)}</text>`,
  );
  if (chart.bars !== undefined) {
    const cats = chart.bars.categories;
    const groupW = (right - left) / Math.max(1, cats.length);
    const barW = (groupW * 0.8) / Math.max(1, chart.series.length);
    cats.forEach((cat, c) => {
      out.push(
        `<text x="${left + groupW * (c + 0.5)}" y="${bottom + 14}" text-anchor="middle">${esc(cat)}</text>`,
      );
      chart.series.forEach((s, k) => {
        const point = s.points.find(([x]) => x === c);
        if (point === undefined || !Number.isFinite(point[1])) return;
        const y = yPos(point[1]);
        const x = left + groupW * c + groupW * 0.1 + barW * k;
        out.push(
          `<rect x="${x}" y="${y}" width="${barW - 2}" height="${Math.max(0, bottom - y)}" fill="${COLORS[k % COLORS.length]}"/>`,
        );
        out.push(
          `<text x="${x + barW / 2}" y="${y - 3}" text-anchor="middle" font-size="9">${esc(short(point[1]))}</text>`,
        );
      });
    });
  } else {
    const xs = all.map(([x]) => x).filter(Number.isFinite);
    const xMax = niceMax(Math.max(...xs, 1));
    const xPos = (x: number) => left + (x / xMax) * (right - left);
    for (let i = 0; i <= 5; i++) {
      const t = (xMax * i) / 5;
      out.push(`<text x="${xPos(t)}" y="${bottom + 14}" text-anchor="middle">${esc(short(t))}</text>`);
    }
    chart.series.forEach((s, k) => {
      const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      if (pts.length === 0) return;
      const color = COLORS[k % COLORS.length];
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${xPos(x).toFixed(1)},${yPos(y).toFixed(1)}`).join(" ")}"/>`,
      );
      for (const [x, y] of pts)
        out.push(`<circle cx="${xPos(x).toFixed(1)}" cy="${yPos(y).toFixed(1)}" r="3" fill="${color}"/>`);
    });
  }
  if (chart.threshold !== undefined) {
    const y = yPos(chart.threshold.y);
    out.push(
      `<line x1="${left}" y1="${y}" x2="${right}" y2="${y}" stroke="#d62728" stroke-dasharray="4 3"/>`,
    );
    out.push(
      `<text x="${right - 4}" y="${y - 4}" text-anchor="end" fill="#d62728">${esc(chart.threshold.label)}</text>`,
    );
  }
  chart.series.forEach((s, k) => {
    const y = top + 14 * k;
    out.push(`<rect x="${right + 12}" y="${y}" width="10" height="10" fill="${COLORS[k % COLORS.length]}"/>`);
    out.push(`<text x="${right + 26}" y="${y + 9}">${esc(s.name)}</text>`);
  });
  return out.join("\n");
}

function short(v: number): string {
  if (!Number.isFinite(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(a >= 1e4 ? 0 : 1)}K`;
  if (a >= 10 || v === 0) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

/** A time as result and profile file names carry it: 2026-11-22T020458Z. */
export function fileStamp(at: Date): string {
  return at
    .toISOString()
    .replace(/[:]/g, "")
    .replace(/\.\d+Z$/, "Z");
}

/** Writes <scenario>-<stamp>[-tag].json/.md/.svg under `outDir`; returns the base path. */
export function writeReport(
  report: BenchReport,
  options: BenchOptions,
  machine: MachineInfo,
  startedAt: Date,
): string {
  mkdirSync(options.outDir, { recursive: true });
  const stamp = fileStamp(startedAt);
  const base = join(
    options.outDir,
    `${options.scenario}-${options.profile}-${stamp}${options.quick ? "-quick" : ""}${options.tag === "" ? "" : `-${options.tag}`}`,
  );
  const json = {
    scenario: report.scenario,
    title: report.title,
    date: startedAt.toISOString(),
    profile: options.profile,
    options,
    machine,
    goals: report.goals,
    // Kept as null when not measured, so every ratio's key is in the file.
    ratios: Object.fromEntries(Object.entries(report.ratios).map(([k, v]) => [k, v ?? null])),
    notes: report.notes,
    data: report.data,
  };
  writeFileSync(
    `${base}.json`,
    `${JSON.stringify(json, (_k, v) => (typeof v === "bigint" ? String(v) : v), 2)}\n`,
  );
  writeFileSync(`${base}.md`, toMarkdown(report, machine, startedAt.toISOString(), options));
  writeFileSync(`${base}.svg`, toSvg(report));
  return base;
}
