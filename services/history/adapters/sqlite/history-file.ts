import { join } from "node:path";
import { moveOwnedTables } from "../../../../lib/sqlite.ts";

/**
 * History's own SQLite file in the data directory. Its store runs on its own thread, and a file of
 * its own means the other services' synchronous SQLite calls on `parley.db` never wait for its
 * write lock (one writer per file).
 */
export const HISTORY_DB_FILE = "history.db";

/** The file every service shared before, where existing installations have history's tables. */
const SHARED_DB_FILE = "parley.db";

/**
 * Returns the path of history's file in `dataDir`, after moving history's tables there from the
 * shared `parley.db` if an earlier version left them there: all of them are named `history_`
 * (the migrations' and the outbox, HISTORY_OUTBOX_TABLE), with owner "history" in
 * schema_migrations. The move survives a crash at any point and is finished by the next call; a
 * call with nothing to move writes nothing. Call it before opening the store, and open history's
 * store on nothing else: tables written to `parley.db` afterwards would be dropped by the next call.
 */
export function prepareHistoryFile(dataDir: string): string {
  const path = join(dataDir, HISTORY_DB_FILE);
  moveOwnedTables({
    fromPath: join(dataDir, SHARED_DB_FILE),
    toPath: path,
    owner: "history",
    tablePrefix: "history_",
  });
  return path;
}
