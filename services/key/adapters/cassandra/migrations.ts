/**
 * The key service's Cassandra tables (component "key" in schema_migrations). Never edit a released
 * migration: add the next one. Every statement must be idempotent (lib/cassandra/migrations.ts).
 */
import type { Migration } from "../../../../lib/cassandra/migrations.ts";
import { outboxTableStatements } from "../../../../lib/cassandra/outbox.ts";

/** The tables of one key store; `prefix` keeps several stores apart in one keyspace (tests). */
export function keyTables(prefix: string) {
  return { devices: `${prefix}key_devices`, outbox: `${prefix}key_outbox` };
}

export function keyMigrations(prefix: string): readonly Migration[] {
  const tables = keyTables(prefix);
  return [
    {
      version: 1,
      description: "devices and their one-time prekeys by user; the key outbox",
      statements: [
        // One partition per user holds the user's device rows (kind 0) and the unclaimed one-time
        // prekeys of each device (kind 1), so that every change of a user, including the device
        // limit and a claim's delete with the count it changes, is one conditional batch on one
        // partition. At most 5 active devices x 1,000 prekeys: a few hundred KB.
        //
        // The static `version` is the partition's compare-and-set guard: every change is a batch
        // `IF version = <read>` that writes version + 1 with `commit_id` (a timeuuid naming the
        // change, to tell after a timeout whether it was applied) and `pending` (its events, not
        // yet known to be in the outbox; see cassandra-key-store.ts).
        //
        // `prekey_set` numbers a device's batch of one-time prekeys: a registration or identity
        // rotation starts a new set and deletes the old one with a range tombstone, which cannot
        // shadow the new rows written in the same batch (and with the same timestamp) because
        // they are in another set. `prekey_floor`: every unclaimed prekey of the set has a
        // larger id, so a claim reads past the tombstones of those claimed before it.
        //
        // gc_grace_seconds stays at its default: a claimed prekey whose tombstone is purged
        // before every replica has it could come back and be handed out a second time.
        `CREATE TABLE IF NOT EXISTS ${tables.devices} (
          user_id text,
          kind tinyint,
          device_id text,
          prekey_set int,
          key_id bigint,
          version bigint static,
          commit_id timeuuid static,
          pending blob static,
          public_key blob,
          key_version int,
          removed_at timestamp,
          display_name text,
          created_at timestamp,
          last_seen_at timestamp,
          identity_key blob,
          identity_key_created_at timestamp,
          prev_identity_key blob,
          prev_identity_key_valid_until timestamp,
          spk_id bigint,
          spk_public_key blob,
          spk_signature blob,
          spk_created_at timestamp,
          prev_spk_id bigint,
          prev_spk_public_key blob,
          prev_spk_signature blob,
          prev_spk_valid_until timestamp,
          lrk_id bigint,
          lrk_public_key blob,
          lrk_signature blob,
          lrk_created_at timestamp,
          prev_lrk_id bigint,
          prev_lrk_public_key blob,
          prev_lrk_signature blob,
          prev_lrk_valid_until timestamp,
          last_resort_used boolean,
          prekeys_low_notified_at timestamp,
          one_time_prekey_count int,
          current_prekey_set int,
          prekey_floor bigint,
          PRIMARY KEY ((user_id), kind, device_id, prekey_set, key_id)
        )`,
        ...outboxTableStatements(tables.outbox),
      ],
    },
  ];
}
