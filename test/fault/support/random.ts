// Seeded randomness for fault scenarios: the same seed gives the same workload (who sends what,
// when, which sends are repeated) and the same client jitter, so a failing seed can be replayed.

/** A uniform float in [0, 1) from a 32-bit state (mulberry32: small, fast, good enough for tests). */
export type Random = {
  (): number;
  /** An integer in [0, n). */
  int(n: number): number;
  /** One element of a non-empty list. */
  pick<T>(items: readonly T[]): T;
  /** True with probability p. */
  chance(p: number): boolean;
  /** A canonical version-4 UUID (what client_message_id must be) drawn from this stream. */
  uuid(): string;
  /** An independent stream derived from this seed and a label (e.g. one per device), whatever was drawn before. */
  fork(label: string): Random;
};

export function createRandom(seed: number): Random {
  let state = seed >>> 0;
  const next = (() => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }) as Random;
  next.int = (n) => Math.floor(next() * n);
  next.pick = (items) => {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[next.int(items.length)] as (typeof items)[number];
  };
  next.chance = (p) => next() < p;
  next.uuid = () => {
    const bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++) bytes[i] = next.int(256);
    bytes[6] = ((bytes[6] as number) & 0x0f) | 0x40;
    bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  };
  next.fork = (label) => createRandom(hash32(`${seed}:${label}`));
  return next;
}

function hash32(text: string): number {
  // FNV-1a: spreads labels over the seed space.
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export const FAULT_SEEDS_VARIABLE = "PARLEY_FAULT_SEEDS";

/**
 * The seeds each scenario runs with: PARLEY_FAULT_SEEDS is either a count (`5`: seeds 1..5) or a
 * comma-separated list (`17,42`: replay those). Default 2 seeds, what CI runs.
 */
export function faultSeeds(env: NodeJS.ProcessEnv = process.env): number[] {
  const raw = env[FAULT_SEEDS_VARIABLE]?.trim() ?? "";
  if (raw === "") return [1, 2];
  if (/^\d+$/.test(raw)) {
    const count = Number(raw);
    if (count < 1) throw new Error(`${FAULT_SEEDS_VARIABLE} must be at least 1, got ${raw}`);
    return Array.from({ length: count }, (_, i) => i + 1);
  }
  const seeds = raw.split(",").map((part) => Number(part.trim()));
  if (seeds.some((s) => !Number.isInteger(s) || s < 0)) {
    throw new Error(
      `${FAULT_SEEDS_VARIABLE} must be a count or a comma-separated list of integers, got ${raw}`,
    );
  }
  return seeds;
}
