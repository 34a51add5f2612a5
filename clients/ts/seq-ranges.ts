import type { SeqRange } from "./client-state.ts";

/** Whether `seq` lies in one of the sorted, disjoint inclusive `ranges`. */
export function rangesHas(ranges: readonly SeqRange[], seq: bigint): boolean {
  for (const [from, to] of ranges) {
    if (seq < from) {
      return false;
    }
    if (seq <= to) {
      return true;
    }
  }
  return false;
}

/** `ranges` plus `[from, to]`, merged with neighbours so the result stays sorted and disjoint. */
export function rangesAdd(ranges: readonly SeqRange[], from: bigint, to: bigint): SeqRange[] {
  const result: SeqRange[] = [];
  let lo = from;
  let hi = to;
  let placed = false;
  for (const [a, b] of ranges) {
    if (b + 1n < lo) {
      result.push([a, b]);
    } else if (hi + 1n < a) {
      if (!placed) {
        result.push([lo, hi]);
        placed = true;
      }
      result.push([a, b]);
    } else {
      lo = a < lo ? a : lo;
      hi = b > hi ? b : hi;
    }
  }
  if (!placed) {
    result.push([lo, hi]);
  }
  return result;
}

/** The runs of seqs in the open interval (`after`, `before`) that none of `ranges` covers, lowest first. */
export function rangesGaps(ranges: readonly SeqRange[], after: bigint, before: bigint): SeqRange[] {
  const gaps: SeqRange[] = [];
  let next = after + 1n;
  for (const [a, b] of ranges) {
    if (a >= before) {
      break;
    }
    if (a > next) {
      gaps.push([next, a - 1n]);
    }
    if (b + 1n > next) {
      next = b + 1n;
    }
  }
  if (next < before) {
    gaps.push([next, before - 1n]);
  }
  return gaps;
}

/** How many seqs `ranges` cover. */
export function rangesSize(ranges: readonly SeqRange[]): bigint {
  let size = 0n;
  for (const [a, b] of ranges) {
    size += b - a + 1n;
  }
  return size;
}
