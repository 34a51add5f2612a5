/**
 * The key service's tables in the embedded SQLite file (owner "key" in schema_migrations). Never
 * edit a released migration: add the next one. Times are milliseconds since the epoch.
 */
export const KEY_MIGRATIONS: readonly string[] = [
  `
  -- One row per device id ever registered by a user. A removed device keeps its row (removed_at
  -- set, keys cleared) so its key version keeps increasing if the id is registered again and so
  -- the edge can tell a revoked device from an unknown one.
  CREATE TABLE key_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    removed_at INTEGER,
    display_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    identity_key BLOB,
    identity_key_created_at INTEGER,
    prev_identity_key BLOB,
    prev_identity_key_valid_until INTEGER,
    spk_id INTEGER,
    spk_public_key BLOB,
    spk_signature BLOB,
    spk_created_at INTEGER,
    prev_spk_id INTEGER,
    prev_spk_public_key BLOB,
    prev_spk_signature BLOB,
    prev_spk_valid_until INTEGER,
    lrk_id INTEGER,
    lrk_public_key BLOB,
    lrk_signature BLOB,
    lrk_created_at INTEGER,
    prev_lrk_id INTEGER,
    prev_lrk_public_key BLOB,
    prev_lrk_signature BLOB,
    prev_lrk_valid_until INTEGER,
    last_resort_used INTEGER NOT NULL DEFAULT 0,
    prekeys_low_notified_at INTEGER,
    one_time_prekey_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
  ) WITHOUT ROWID;
  CREATE INDEX key_devices_active ON key_devices (user_id, created_at, device_id) WHERE removed_at IS NULL;
  -- Unclaimed one-time prekeys: a claim deletes the row it hands out.
  CREATE TABLE key_one_time_prekeys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
  ) WITHOUT ROWID;
  `,
];
