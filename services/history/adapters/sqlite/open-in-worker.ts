// How the store contract's worker threads open the SQLite store: another connection to the same file.
import type { HistoryStore } from "../../domain/history-store.ts";
import { createSqliteHistoryStore } from "./sqlite-history-store.ts";

export function openHistoryStore(config: unknown): HistoryStore {
  const { path } = config as { path: string };
  return createSqliteHistoryStore({ path });
}
