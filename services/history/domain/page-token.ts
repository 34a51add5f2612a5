import { createHash } from "node:crypto";
import { invalidPageToken } from "./errors.ts";

/**
 * Page tokens of ListMessages and GetReceipts (AIP-158): base64url of a small JSON object
 * `{ v: 1, k: <listing>, s: <scope hash>, p: <position>, t: <issued at, unix seconds> }`.
 * - `k` names the listing, so a token of one RPC is refused by the other.
 * - `s` hashes the fields that define the result set (the calling device, the conversation, the
 *   range and order, the message; not page_size, which may change between pages), so a token
 *   reused with other fields, or by another device, is refused.
 * - `p` is where the next page starts: the last seq returned (ListMessages) or the last user id
 *   (GetReceipts).
 * - `t` lets tokens expire after PAGE_TOKEN_TTL_MS.
 * Tokens are not signed: they only say where to continue, and every page checks membership again.
 * Any defect is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN.
 */
export type PageListing = "messages" | "receipts";

export const PAGE_TOKEN_TTL_MS = 24 * 60 * 60 * 1000;
const VERSION = 1;
const BASE64URL = /^[A-Za-z0-9_-]+$/;
/** Tokens from the future beyond this clock skew between replicas were not made by us. */
const MAX_SKEW_MS = 5 * 60 * 1000;

function scopeHash(scope: readonly unknown[]): string {
  return createHash("sha256").update(JSON.stringify(scope)).digest("base64url").slice(0, 16);
}

export function encodePageToken(
  listing: PageListing,
  scope: readonly unknown[],
  position: string | number,
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

function decode(token: string, listing: PageListing, scope: readonly unknown[], now: Date): unknown {
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
  if (age > PAGE_TOKEN_TTL_MS) throw invalidPageToken("expired");
  if (age < -MAX_SKEW_MS) throw invalidPageToken("malformed");
  return p;
}

/** The seq a ListMessages token continues from. */
export function decodeSeqPageToken(token: string, scope: readonly unknown[], now: Date): number {
  const p = decode(token, "messages", scope, now);
  if (typeof p !== "number" || !Number.isSafeInteger(p) || p < 1) throw invalidPageToken("malformed");
  return p;
}

/** The user id a GetReceipts token continues after. */
export function decodeUserPageToken(token: string, scope: readonly unknown[], now: Date): string {
  const p = decode(token, "receipts", scope, now);
  if (typeof p !== "string" || p.length === 0 || p.length > 64) throw invalidPageToken("malformed");
  return p;
}

/** page_size 0 means the default; anything above the maximum is capped (protovalidate caps it too). */
export function effectivePageSize(pageSize: number, defaultSize: number, maxSize: number): number {
  if (pageSize <= 0) return defaultSize;
  return Math.min(pageSize, maxSize);
}
