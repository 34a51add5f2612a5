/**
 * The `pending` column's codec: the outbox inserts of a committed change, kept on the user's
 * partition until they are known to be in the outbox. Each insert is stored as the statement the
 * outbox built (query and parameters, its timeuuid id included), so whoever applies it later
 * writes the very same row, and applying it twice leaves one event.
 */
import cassandra from "cassandra-driver";
import type { CassandraStatement } from "../../../../lib/cassandra/outbox.ts";

type Tagged =
  | readonly ["null"]
  | readonly ["string", string]
  | readonly ["number", number]
  | readonly ["boolean", boolean]
  | readonly ["blob", string]
  | readonly ["timeuuid", string]
  | readonly ["uuid", string]
  | readonly ["json", unknown];

interface StoredStatement {
  readonly query: string;
  readonly params: readonly Tagged[];
}

const { TimeUuid, Uuid } = cassandra.types;

function tag(value: unknown): Tagged {
  if (value === null || value === undefined) return ["null"];
  if (typeof value === "string") return ["string", value];
  if (typeof value === "number") return ["number", value];
  if (typeof value === "boolean") return ["boolean", value];
  if (value instanceof Uint8Array) return ["blob", Buffer.from(value).toString("base64")];
  if (value instanceof TimeUuid) return ["timeuuid", value.toString()];
  if (value instanceof Uuid) return ["uuid", value.toString()];
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return ["json", value];
  }
  throw new Error(`cannot keep a statement parameter of type ${value.constructor?.name ?? typeof value}`);
}

function untag(value: Tagged): unknown {
  switch (value[0]) {
    case "null":
      return null;
    case "blob":
      return Buffer.from(value[1], "base64");
    case "timeuuid":
      return TimeUuid.fromString(value[1]);
    case "uuid":
      return Uuid.fromString(value[1]);
    default:
      return value[1];
  }
}

export function encodePending(statements: readonly CassandraStatement[]): Buffer | null {
  if (statements.length === 0) return null;
  const stored: StoredStatement[] = statements.map((s) => ({ query: s.query, params: s.params.map(tag) }));
  return Buffer.from(JSON.stringify(stored));
}

export function decodePending(blob: Buffer | null | undefined): CassandraStatement[] {
  if (blob === null || blob === undefined || blob.length === 0) return [];
  const stored = JSON.parse(blob.toString("utf8")) as StoredStatement[];
  return stored.map((s) => ({ query: s.query, params: s.params.map(untag) }));
}
