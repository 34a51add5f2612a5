/**
 * A latency histogram with bounded memory and about 1.5% relative precision (HDR-style: each
 * power of two of microseconds is split into 64 linear sub-buckets), so millions of samples cost
 * a few kilobytes and percentiles come out without sorting.
 */
export interface LatencyHistogram {
  readonly count: number;
  /** Exact, not bucketed. */
  readonly max: number;
  readonly min: number;
  readonly mean: number;
  /** In ms. */
  record(ms: number): void;
  /** The value at or below which `p` percent of the samples lie, in ms (NaN when empty). */
  percentile(p: number): number;
  merge(other: LatencyHistogram): void;
  summary(): LatencySummary;
  /** Internal: the bucket counts, for merging. */
  readonly buckets: Float64Array;
}

export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly mean: number;
}

const SUB_BITS = 6;
const SUB = 1 << SUB_BITS;
/** Powers of two of microseconds covered: up to about 2^37 us, i.e. 38 hours. */
const POWERS = 38;

function bucketOf(us: number): number {
  if (us < SUB) return Math.max(0, Math.floor(us));
  // us / 2^power falls in [SUB, 2 * SUB): SUB linear sub-buckets per power of two.
  const power = Math.floor(Math.log2(us)) - SUB_BITS;
  const sub = Math.min(SUB - 1, Math.floor(us / 2 ** power) - SUB);
  return Math.min((power + 1) * SUB + sub, (POWERS + 1) * SUB - 1);
}

/** The upper edge (in us) of a bucket, so a percentile never understates. */
function upperEdge(bucket: number): number {
  if (bucket < SUB) return bucket + 1;
  const power = Math.floor(bucket / SUB) - 1;
  const sub = bucket % SUB;
  return (SUB + sub + 1) * 2 ** power;
}

export function createLatencyHistogram(): LatencyHistogram {
  const buckets = new Float64Array((POWERS + 1) * SUB);
  let count = 0;
  let max = 0;
  let min = Number.POSITIVE_INFINITY;
  let total = 0;
  const histogram: LatencyHistogram = {
    get count() {
      return count;
    },
    get max() {
      return count === 0 ? Number.NaN : max;
    },
    get min() {
      return count === 0 ? Number.NaN : min;
    },
    get mean() {
      return count === 0 ? Number.NaN : total / count;
    },
    buckets,
    record(ms) {
      const value = Math.max(0, ms);
      const index = bucketOf(value * 1000);
      buckets[index] = (buckets[index] ?? 0) + 1;
      count++;
      total += value;
      if (value > max) max = value;
      if (value < min) min = value;
    },
    percentile(p) {
      if (count === 0) return Number.NaN;
      const rank = Math.max(1, Math.ceil((p / 100) * count));
      let seen = 0;
      for (let i = 0; i < buckets.length; i++) {
        seen += buckets[i] ?? 0;
        if (seen >= rank) return Math.min(max, upperEdge(i) / 1000);
      }
      return max;
    },
    merge(other) {
      for (let i = 0; i < buckets.length; i++) buckets[i] = (buckets[i] ?? 0) + (other.buckets[i] ?? 0);
      if (other.count > 0) {
        count += other.count;
        total += other.mean * other.count;
        max = Math.max(max, other.max);
        min = Math.min(min, other.min);
      }
    },
    summary() {
      return {
        count,
        p50: histogram.percentile(50),
        p90: histogram.percentile(90),
        p99: histogram.percentile(99),
        p999: histogram.percentile(99.9),
        max: histogram.max,
        mean: histogram.mean,
      };
    },
  };
  return histogram;
}
