import type { Client } from "@connectrpc/connect";
import type { HistoryService, SyncResponse } from "../../gen/parley/edge/v1/history_service_pb.ts";
import { isRetryableReadError } from "./client-error.ts";
import type { RetryPolicy } from "./retry.ts";
import { withRetries } from "./retry.ts";

const SYNC_PAGE_SIZE = 500;

export type SyncPagesResult = {
  /** The cursor after the last page. */
  readonly cursor: Uint8Array;
  /** The highest stored seq per conversation, over every page (SyncResponse.watermarks). */
  readonly watermarks: ReadonlyMap<string, bigint>;
  readonly pages: number;
};

/**
 * Pages HistoryService.Sync from `cursor` until `more` is false, handing each page to `onPage`
 * before asking for the next, retrying read failures page by page.
 */
export async function syncPages(
  history: Client<typeof HistoryService>,
  cursor: Uint8Array,
  policy: Omit<RetryPolicy, "retryable">,
  onPage: (page: SyncResponse) => void,
): Promise<SyncPagesResult> {
  const watermarks = new Map<string, bigint>();
  let position = cursor;
  for (let pages = 1; ; pages++) {
    const request = { cursor: position, pageSize: SYNC_PAGE_SIZE };
    const page = await withRetries(() => history.sync(request, { signal: policy.signal }), {
      ...policy,
      retryable: isRetryableReadError,
    });
    onPage(page);
    for (const { conversationId, lastSeq } of page.watermarks) {
      const known = watermarks.get(conversationId);
      if (known === undefined || lastSeq > known) {
        watermarks.set(conversationId, lastSeq);
      }
    }
    position = page.nextCursor.length > 0 ? page.nextCursor : position;
    if (!page.more) {
      return { cursor: position, watermarks, pages };
    }
  }
}
