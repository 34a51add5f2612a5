import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets, uniqueTestName } from "../engines.ts";
import { createLogger } from "../logging.ts";
import { applyMigrations } from "./migrations.ts";
import { createCassandraOutbox, outboxTableStatements } from "./outbox.ts";
import type { CassandraClient } from "./session.ts";
import { openCassandra } from "./session.ts";

const targets = engineTargets();
const logger = createLogger("cassandra-test", "silent");

describe.runIf(targets)("cassandra foundation (real Cassandra)", () => {
  let client: CassandraClient;
  const keyspace = uniqueTestName("parley_lib");

  beforeAll(async () => {
    if (!targets) return;
    client = await openCassandra({
      contactPoints: targets.cassandraContactPoints,
      localDataCenter: targets.cassandraDatacenter,
      keyspace,
      logger,
    });
  });
  afterAll(async () => {
    await client?.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`);
    await client?.shutdown();
  });

  it("applies each migration once, in order, also when processes race", async () => {
    const migrations = [
      {
        version: 1,
        description: "things",
        statements: ["CREATE TABLE IF NOT EXISTS things (id int PRIMARY KEY)"],
      },
      {
        version: 2,
        description: "things get a name",
        statements: ["CREATE TABLE IF NOT EXISTS named_things (id int PRIMARY KEY, name text)"],
      },
    ];
    const results = await Promise.all([
      applyMigrations(client, "test", migrations, logger),
      applyMigrations(client, "test", migrations, logger),
    ]);
    expect(results.flatMap((r) => r.applied).sort()).toEqual([1, 2]);
    expect((await applyMigrations(client, "test", migrations, logger)).applied).toEqual([]);
    await client.execute("INSERT INTO named_things (id, name) VALUES (1, 'a')");
    const more = [
      ...migrations,
      { version: 3, description: "x", statements: ["CREATE TABLE IF NOT EXISTS x (id int PRIMARY KEY)"] },
    ];
    expect((await applyMigrations(client, "test", more, logger)).applied).toEqual([3]);
  });

  it("rejects migrations out of order", async () => {
    await expect(
      applyMigrations(client, "bad", [{ version: 2, description: "", statements: [] }], logger),
    ).rejects.toThrow(/numbered 1, 2, 3/);
  });

  it("outbox: events written in a logged batch come out oldest first and go once published", async () => {
    for (const statement of outboxTableStatements("test_outbox")) await client.execute(statement);
    const outbox = createCassandraOutbox(client, "test_outbox");
    const events = Array.from({ length: 5 }, (_, i) => ({
      topic: "t",
      key: `k${i % 2}`,
      payload: new Uint8Array([i]),
      properties: { traceparent: `tp${i}` },
    }));
    for (const event of events) {
      await client.batch(
        [
          { query: "INSERT INTO things (id) VALUES (?)", params: [event.payload[0]] },
          outbox.appendStatement(event),
        ],
        { logged: true },
      );
    }
    const first = await outbox.pending(3);
    expect(first.map((r) => r.payload[0])).toEqual([0, 1, 2]);
    expect(first[0]?.properties).toEqual({ traceparent: "tp0" });
    await outbox.markPublished(first.map((r) => r.id));
    const rest = await outbox.pending(10);
    expect(rest.map((r) => r.payload[0])).toEqual([3, 4]);

    // A slow writer whose id is older than events already published is still found.
    const late = outbox.appendStatement({ topic: "t", key: "late", payload: new Uint8Array([9]) });
    await outbox.markPublished(rest.map((r) => r.id));
    await client.execute(late.query, late.params);
    expect((await outbox.pending(10)).map((r) => r.key)).toEqual(["late"]);
  });
});
