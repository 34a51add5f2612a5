import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { describeIdempotencyStoreContract } from "../domain/idempotency-store.contract.ts";
import { createMemoryIdempotencyStore } from "./memory/idempotency-store.ts";
import { createSqliteIdempotencyStore } from "./sqlite/sqlite-idempotency-store.ts";

describeIdempotencyStoreContract("memory", (options) => createMemoryIdempotencyStore(options));
describeIdempotencyStoreContract("sqlite", (options) =>
  createSqliteIdempotencyStore({ path: ":memory:", ...options }),
);

const dir = mkdtempSync(join(tmpdir(), "parley-sender-idem-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("the SQLite store keeps reservations across reopening the file", async () => {
  const path = join(dir, "parley.db");
  const first = createSqliteIdempotencyStore({ path });
  const record = { messageId: "m1", contentDigest: "d", acceptedAt: new Date(5), published: false };
  await first.reserve("k", record);
  first.close();
  const reopened = createSqliteIdempotencyStore({ path });
  expect(await reopened.get("k")).toEqual(record);
  reopened.close();
});

it("the SQLite store commits what is still queued when it is closed", async () => {
  const path = join(dir, "queued.db");
  const first = createSqliteIdempotencyStore({ path });
  const record = { messageId: "m1", contentDigest: "d", acceptedAt: new Date(5), published: false };
  // Not awaited: the reservation waits for the end of this turn's shared transaction.
  const reserved = first.reserve("k", record);
  first.close();
  expect(await reserved).toEqual(record);
  const reopened = createSqliteIdempotencyStore({ path });
  expect(await reopened.get("k")).toEqual(record);
  reopened.close();
});
