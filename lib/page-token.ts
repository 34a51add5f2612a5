import { createHash } from "node:crypto";
import type { ParleyError } from "./errors.ts";
import { invalidArgument } from "./errors.ts";

/**
 * Opaque page tokens (AIP-158). A token is base64url of a small JSON object:
 * `{ v: 1, k: <listing>, s: <scope hash>, p: <position>, t: <issued at, unix seconds> }`.
 * - `k` names the listing, so a token of one List RPC is refused by another.
 * - `s` hashes the request fields that define the result set (the caller, filters, the
 *   conversation; not page_size, which may change between pages), so a token reused with other
 *   fields is refused.
 * - `p` is where the next page starts (the last key returned), checked field by field by the caller.
 * - `t` lets tokens expire (TOKEN_TTL_MS).
 * Clients must treat tokens as opaque; the format may change with `v`. Tokens are not signed: they
 * only say where to continue, and every page re-checks that the caller may see what it lists.
 * Every defect is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN. Shared by every service's List
 * RPCs so they all behave alike.
 */
/** A name per List RPC (e.g. "connections", "messages"), so a token of one is refused by another. */
export type PageListing = string;

export type PagePosition = readonly (string | number)[];

/** How long a page token stays valid. */
export const PAGE_TOKEN_TTL_MS = 24 * 60 * 60 * 1000;

const VERSION = 1;
// Tokens are at most 1,024 characters (the request's rule); ours stay far below.
const BASE64URL = /^[A-Za-z0-9_-]+$/;

export function invalidPageToken(why: string): ParleyError {
  return invalidArgument("INVALID_PAGE_TOKEN", `invalid page token: ${why}`);
}

function scopeHash(scope: readonly unknown[]): string {
  return createHash("sha256").update(JSON.stringify(scope)).digest("base64url").slice(0, 16);
}

export function encodePageToken(
  listing: PageListing,
  scope: readonly unknown[],
  position: PagePosition,
  issuedAt: Date,
): string {
  const body = {
    v: VERSION,
    k: listing,
    s: scopeHash(scope),
    p: position,
    t: Math.floor(issuedAt.getTime() / 1000),
  };
  return Buffer.from(JSON.stringify(body), "utf8").toString("base64url");
}

/**
 * The position a token continues from. Throws INVALID_ARGUMENT (INVALID_PAGE_TOKEN) when the token
 * is malformed, of another listing or request, or expired.
 */
export function decodePageToken(
  token: string,
  listing: PageListing,
  scope: readonly unknown[],
  now: Date,
  ttlMs: number = PAGE_TOKEN_TTL_MS,
): PagePosition {
  if (!BASE64URL.test(token)) throw invalidPageToken("malformed");
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidPageToken("malformed");
  }
  if (typeof body !== "object" || body === null) throw invalidPageToken("malformed");
  const { v, k, s, p, t } = body as Record<string, unknown>;
  if (v !== VERSION) throw invalidPageToken("unsupported version");
  if (k !== listing) throw invalidPageToken("token of another listing");
  if (s !== scopeHash(scope)) throw invalidPageToken("token of a request with other fields");
  if (typeof t !== "number" || !Number.isInteger(t)) throw invalidPageToken("malformed");
  const age = now.getTime() - t * 1000;
  if (age > ttlMs) throw invalidPageToken("expired");
  // A token from the future (beyond clock skew between replicas) was not made by us.
  if (age < -5 * 60 * 1000) throw invalidPageToken("malformed");
  if (!Array.isArray(p) || !p.every((x) => typeof x === "string" || typeof x === "number")) {
    throw invalidPageToken("malformed");
  }
  return p as PagePosition;
}

/** The string at `index` of a position, or INVALID_PAGE_TOKEN. */
export function positionString(position: PagePosition, index: number): string {
  const value = position[index];
  if (typeof value !== "string" || value.length === 0 || value.length > 256)
    throw invalidPageToken("malformed");
  return value;
}

/** The non-negative integer at `index` of a position, or INVALID_PAGE_TOKEN. */
export function positionInteger(position: PagePosition, index: number): number {
  const value = position[index];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw invalidPageToken("malformed");
  }
  return value;
}

/** page_size 0 means the default; anything above the maximum is capped. */
export function effectivePageSize(pageSize: number, defaultSize: number, maxSize: number): number {
  if (pageSize <= 0) return defaultSize;
  return Math.min(pageSize, maxSize);
}
