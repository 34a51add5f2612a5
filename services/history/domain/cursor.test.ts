import { describe, expect, it } from "vitest";
import { ParleyError } from "../../../lib/errors.ts";
import { CURSOR_LENGTH, decodeCursor, encodeCursor } from "./cursor.ts";

const phone = { userId: "bob", deviceId: "phone" };

function reason(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof ParleyError ? `${err.code}/${err.reason}` : "not a ParleyError";
  }
  return undefined;
}

describe("inbox cursors", () => {
  it("round-trips a position for the device it was issued to", () => {
    for (const position of [0, 1, 255, 2 ** 32 + 7, Number.MAX_SAFE_INTEGER]) {
      const cursor = encodeCursor(phone, position);
      expect(cursor.length).toBe(CURSOR_LENGTH);
      expect(decodeCursor(phone, cursor)).toBe(position);
    }
    expect(decodeCursor(phone, new Uint8Array())).toBe(0);
  });

  it("refuses another device's cursor, including the same device id of another user", () => {
    const cursor = encodeCursor(phone, 42);
    expect(reason(() => decodeCursor({ userId: "bob", deviceId: "laptop" }, cursor))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
    expect(reason(() => decodeCursor({ userId: "alice", deviceId: "phone" }, cursor))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
    // user/device boundaries are unambiguous: "bo" + "b\0phone" is not "bob" + "phone".
    expect(reason(() => decodeCursor({ userId: "bobp", deviceId: "hone" }, cursor))).toBe(
      "invalid_argument/INVALID_CURSOR",
    );
  });

  it("refuses malformed cursors", () => {
    const cursor = encodeCursor(phone, 42);
    const versioned = cursor.slice();
    versioned[0] = 2;
    const tooBig = cursor.slice();
    tooBig.fill(0xff, 9);
    for (const bad of [cursor.subarray(0, 16), new Uint8Array([...cursor, 0]), versioned, tooBig]) {
      expect(reason(() => decodeCursor(phone, bad))).toBe("invalid_argument/INVALID_CURSOR");
    }
  });
});
