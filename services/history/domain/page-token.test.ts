import { describe, expect, it } from "vitest";
import { ParleyError } from "../../../lib/errors.ts";
import {
  decodeSeqPageToken,
  decodeUserPageToken,
  effectivePageSize,
  encodePageToken,
  PAGE_TOKEN_TTL_MS,
} from "./page-token.ts";

const now = new Date("2030-01-01T00:00:00.000Z");
const later = (ms: number) => new Date(now.getTime() + ms);

function reason(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof ParleyError ? `${err.code}/${err.reason}` : "not a ParleyError";
  }
  return undefined;
}

describe("page tokens", () => {
  const scope = ["bob", "phone", "c1", 0, 0, "newest_first"];

  it("continue from the position they carry, for the same request", () => {
    expect(decodeSeqPageToken(encodePageToken("messages", scope, 17, now), scope, later(1000))).toBe(17);
    expect(decodeUserPageToken(encodePageToken("receipts", ["x"], "carol", now), ["x"], now)).toBe("carol");
  });

  it("are refused when tampered with, of another listing or request, or expired", () => {
    const token = encodePageToken("messages", scope, 17, now);
    const bad = [
      () => decodeSeqPageToken("not base64!", scope, now),
      () => decodeSeqPageToken(Buffer.from("{}").toString("base64url"), scope, now),
      () => decodeSeqPageToken(`${token}x`, scope, now),
      () => decodeSeqPageToken(token, ["bob", "laptop", "c1", 0, 0, "newest_first"], now),
      () => decodeSeqPageToken(token, ["bob", "phone", "c1", 0, 0, "oldest_first"], now),
      () => decodeUserPageToken(token, scope, now),
      () => decodeSeqPageToken(token, scope, later(PAGE_TOKEN_TTL_MS + 1000)),
      () => decodeSeqPageToken(encodePageToken("messages", scope, "17", now), scope, now),
      () => decodeSeqPageToken(encodePageToken("messages", scope, 0, now), scope, now),
    ];
    for (const attempt of bad) expect(reason(attempt)).toBe("invalid_argument/INVALID_PAGE_TOKEN");
  });

  it("page sizes: 0 is the default, above the maximum is capped", () => {
    expect([0, 1, 50, 5000].map((n) => effectivePageSize(n, 50, 1000))).toEqual([50, 1, 50, 1000]);
  });
});
