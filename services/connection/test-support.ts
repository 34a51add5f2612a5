// Helpers for the connection service's own tests (not used by production code).
import { fromBinary } from "@bufbuild/protobuf";
import { expect } from "vitest";
import type {
  BlockChanged,
  ContactChanged,
  GroupRenamed,
  MembershipChanged,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import {
  BlockChangedSchema,
  ContactChangedSchema,
  GroupRenamedSchema,
  MembershipChangedSchema,
} from "../../gen/parley/events/v1/connection_events_pb.ts";
import { Topics } from "../../lib/broker/broker.ts";
import type { ErrorCode, ParleyError } from "../../lib/errors.ts";
import { isParleyError } from "../../lib/errors.ts";
import type { OutboxRecord } from "../../lib/outbox.ts";
import type { RateRule } from "../../lib/rate-limit.ts";
import { createMemoryRateLimiter } from "../../lib/rate-limit.ts";
import { createSqliteConnectionStore } from "./adapters/sqlite/sqlite-connection-store.ts";
import type { ConnectionDomain } from "./domain/connection-domain.ts";
import { createConnectionDomain } from "./domain/connection-domain.ts";
import type { ConnectionStore } from "./domain/connection-store.ts";
import type { ConnectionDomainDeps } from "./domain/deps.ts";
import { encodeConnectionEvent } from "./event-encoder.ts";

export const T0 = new Date("2030-01-01T00:00:00.000Z");

/** A clock tests move by hand. */
export function manualClock(start: Date = T0) {
  let now = start.getTime();
  return {
    now: () => new Date(now),
    advance(ms: number) {
      now += ms;
    },
  };
}

export interface TestDomain extends ConnectionDomain {
  readonly store: ConnectionStore;
  readonly clock: ReturnType<typeof manualClock>;
  /** Every event written so far, decoded; each call returns only the events since the last call. */
  takeEvents(): Promise<DecodedEvent[]>;
}

export type DecodedEvent =
  | {
      readonly topic: typeof Topics.memberships;
      readonly key: string;
      readonly traceparent: string | undefined;
      readonly event: MembershipChanged;
    }
  | {
      readonly topic: typeof Topics.blocks;
      readonly key: string;
      readonly traceparent: string | undefined;
      readonly event: BlockChanged;
    }
  | {
      readonly topic: typeof Topics.contacts;
      readonly key: string;
      readonly traceparent: string | undefined;
      readonly event: ContactChanged;
    }
  | {
      readonly topic: typeof Topics.groups;
      readonly key: string;
      readonly traceparent: string | undefined;
      readonly event: GroupRenamed;
    };

export function decodeOutboxRecord(record: OutboxRecord): DecodedEvent {
  const base = { key: record.key, traceparent: record.properties?.traceparent };
  switch (record.topic) {
    case Topics.memberships:
      return {
        ...base,
        topic: Topics.memberships,
        event: fromBinary(MembershipChangedSchema, record.payload),
      };
    case Topics.blocks:
      return { ...base, topic: Topics.blocks, event: fromBinary(BlockChangedSchema, record.payload) };
    case Topics.contacts:
      return { ...base, topic: Topics.contacts, event: fromBinary(ContactChangedSchema, record.payload) };
    case Topics.groups:
      return { ...base, topic: Topics.groups, event: fromBinary(GroupRenamedSchema, record.payload) };
    default:
      throw new Error(`unexpected topic ${record.topic}`);
  }
}

/**
 * A domain over an in-memory SQLite store (or the given one), with the real event encoder and a
 * manual clock; `requestRate` limits connection requests with the in-memory limiter on that clock.
 */
export function createTestDomain(
  options: {
    readonly store?: ConnectionStore;
    readonly requestRate?: RateRule;
  } & Partial<Omit<ConnectionDomainDeps, "store">> = {},
): TestDomain {
  const { requestRate, ...deps } = options;
  const store = options.store ?? createSqliteConnectionStore({ path: ":memory:" });
  const clock = manualClock();
  const domain = createConnectionDomain({
    encodeEvent: encodeConnectionEvent,
    clock: clock.now,
    ...(requestRate === undefined
      ? {}
      : { requestLimiter: createMemoryRateLimiter(requestRate, { now: () => clock.now().getTime() }) }),
    ...deps,
    store,
  });
  return {
    ...domain,
    store,
    clock,
    async takeEvents() {
      const records = await store.outbox.pending(100_000);
      await store.outbox.markPublished(records.map((r) => r.id));
      return records.map(decodeOutboxRecord);
    },
  };
}

/** Makes users known (with a display name) so others can find them. */
export async function createUsers(domain: ConnectionDomain, ...userIds: string[]): Promise<void> {
  for (const id of userIds) await domain.contacts.upsertProfile(id, `User ${id}`, "");
}

/** Connects `a` with each of `others` (each other user asks, `a` accepts). */
export async function connect(domain: ConnectionDomain, a: string, ...others: string[]): Promise<void> {
  for (const other of others) {
    await domain.contacts.requestConnection(other, a);
    await domain.contacts.acceptConnection(a, other);
  }
}

/** The ParleyError a promise rejects with; fails the test when it resolves or rejects otherwise. */
export async function rejection(promise: Promise<unknown>): Promise<ParleyError> {
  try {
    await promise;
  } catch (err) {
    if (isParleyError(err)) return err;
    throw err;
  }
  throw new Error("expected a ParleyError, but the call succeeded");
}

/** Asserts a rejection's code and reason (and returns it for more checks). */
export async function expectError(
  promise: Promise<unknown>,
  code: ErrorCode,
  reason: string,
): Promise<ParleyError> {
  const err = await rejection(promise);
  expect({ code: err.code, reason: err.reason }).toEqual({ code, reason });
  return err;
}
