import { describe, expect, it } from "vitest";
import { isParleyError } from "./errors.ts";
import { decodePageToken, effectivePageSize, encodePageToken, PAGE_TOKEN_TTL_MS } from "./page-token.ts";

const NOW = new Date("2030-01-01T00:00:00.000Z");

function reasonOf(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    if (isParleyError(err)) return `${err.code}/${err.reason}`;
    throw err;
  }
  return "ok";
}

describe("page tokens", () => {
  it("round-trip the position for the same listing and scope", () => {
    const token = encodePageToken("members", ["alice", "c1"], ["admin", "bob", 7], NOW);
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodePageToken(token, "members", ["alice", "c1"], NOW)).toEqual(["admin", "bob", 7]);
  });

  it("are refused for another listing, another scope, when tampered with, expired or from the future", () => {
    const token = encodePageToken("connections", ["alice", []], ["bob"], NOW);
    const bad = `invalid_argument/${"INVALID_PAGE_TOKEN"}`;
    expect(reasonOf(() => decodePageToken(token, "conversations", ["alice", []], NOW))).toBe(bad);
    expect(reasonOf(() => decodePageToken(token, "connections", ["alice", ["accepted"]], NOW))).toBe(bad);
    expect(reasonOf(() => decodePageToken(token, "connections", ["carol", []], NOW))).toBe(bad);
    expect(
      reasonOf(() => decodePageToken(`${token.slice(0, -2)}xx`, "connections", ["alice", []], NOW)),
    ).toBe(bad);
    expect(reasonOf(() => decodePageToken("a b", "connections", ["alice", []], NOW))).toBe(bad);
    expect(
      reasonOf(() => decodePageToken(Buffer.from("[]").toString("base64url"), "connections", [], NOW)),
    ).toBe(bad);
    const later = new Date(NOW.getTime() + PAGE_TOKEN_TTL_MS + 1000);
    expect(reasonOf(() => decodePageToken(token, "connections", ["alice", []], later))).toBe(bad);
    const earlier = new Date(NOW.getTime() - 60 * 60 * 1000);
    expect(reasonOf(() => decodePageToken(token, "connections", ["alice", []], earlier))).toBe(bad);
    expect(reasonOf(() => decodePageToken(token, "connections", ["alice", []], NOW))).toBe("ok");
  });

  it("page_size 0 means the default; larger sizes are capped", () => {
    expect(effectivePageSize(0, 100, 1000)).toBe(100);
    expect(effectivePageSize(7, 100, 1000)).toBe(7);
    expect(effectivePageSize(5000, 100, 1000)).toBe(1000);
  });
});
