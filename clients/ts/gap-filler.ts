import type { Client } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import type { HistoryService } from "../../gen/parley/edge/v1/history_service_pb.ts";
import { SeqOrder } from "../../gen/parley/history/v1/history_pb.ts";
import { isRetryableReadError, toClientError } from "./client-error.ts";
import type { FillResult } from "./inbound-pipeline.ts";
import type { RetryPolicy } from "./retry.ts";
import { withRetries } from "./retry.ts";

/** At most this many messages per ListMessages call (the server allows 1,000 and may return fewer). */
const FILL_PAGE_SIZE = 200;
/** Pages that come back empty yet say more follows are followed this many times at most. */
const MAX_EMPTY_PAGES = 10;

/**
 * Fetches one page of a seq gap with HistoryService.ListMessages, oldest first, retrying read
 * failures. NOT_FOUND (not a member any more) means the gap can never be filled.
 */
export function createGapFiller(
  history: Client<typeof HistoryService>,
  policy: Omit<RetryPolicy, "retryable">,
): (conversationId: string, afterSeq: bigint, beforeSeq: bigint) => Promise<FillResult> {
  return async (conversationId, afterSeq, beforeSeq) => {
    try {
      let pageToken = "";
      for (let page = 0; page < MAX_EMPTY_PAGES; page++) {
        const wanted = beforeSeq - afterSeq - 1n;
        const response = await withRetries(
          () =>
            history.listMessages(
              {
                conversationId,
                afterSeq,
                beforeSeq,
                order: SeqOrder.OLDEST_FIRST,
                pageSize: wanted < BigInt(FILL_PAGE_SIZE) ? Number(wanted) : FILL_PAGE_SIZE,
                pageToken,
              },
              { signal: policy.signal },
            ),
          { ...policy, retryable: isRetryableReadError },
        );
        if (response.messages.length > 0 || response.nextPageToken === "") {
          return { kind: "page", messages: response.messages, complete: response.nextPageToken === "" };
        }
        pageToken = response.nextPageToken;
      }
      return { kind: "page", messages: [], complete: false };
    } catch (thrown) {
      const error = toClientError(thrown);
      return error.code === Code.NotFound ? { kind: "gone" } : { kind: "failed", error };
    }
  };
}
