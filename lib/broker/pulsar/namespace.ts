/**
 * The Pulsar namespace Parley's topics live in, and the policies the broker port's promises rest
 * on. Run at start-up by whoever owns the deployment (every call is idempotent).
 */
import { Topics } from "../broker.ts";
import type { PulsarAdmin, RetentionPolicy } from "./admin.ts";
import { createPulsarAdmin } from "./admin.ts";

export interface PulsarNamespaceOptions {
  /** Pulsar's web service (admin REST API), e.g. `http://127.0.0.1:8080`. */
  readonly webUrl: string;
  readonly tenant: string;
  readonly namespace: string;
  /**
   * How long acknowledged messages stay readable (replays, `follow`). Unacknowledged messages are
   * kept whatever this says. Default 7 days, no size limit (what the embedded broker keeps).
   */
  readonly retention?: RetentionPolicy;
  /**
   * Topics read as "latest message per key" (`follow(..., { compacted: true })`). Default: the
   * membership and block control topics.
   */
  readonly compactedTopics?: readonly string[];
  /** Backlog size that triggers Pulsar's compaction of those topics. Default 1 MiB. */
  readonly compactionThresholdBytes?: number;
}

export interface PulsarNamespaceResult {
  readonly createdTenant: boolean;
  readonly createdNamespace: boolean;
}

export const DEFAULT_RETENTION: RetentionPolicy = { timeInMinutes: 7 * 24 * 60, sizeInMB: -1 };
const DEFAULT_COMPACTION_THRESHOLD_BYTES = 1024 * 1024;
/** Compacted topics keep every message: the WebSocket reader cannot read Pulsar's compacted ledger. */
const KEEP_FOREVER: RetentionPolicy = { timeInMinutes: -1, sizeInMB: -1 };

export class PulsarNamespaceError extends Error {
  override readonly name = "PulsarNamespaceError";
}

/**
 * Creates the tenant and namespace when missing and sets, every time:
 * - retention (time and size) for acknowledged messages, on the whole namespace (`chat.messages`
 *   among them);
 * - deduplication by producer name and sequence id, so a publish resent after a dropped connection
 *   is stored once;
 * - message TTL 0 (disabled) explicitly: a TTL would acknowledge messages nobody has handled yet;
 * - on each compacted topic (created if missing): a compaction threshold, and unlimited retention,
 *   because a WebSocket reader cannot `readCompacted` and replays the whole topic instead (the
 *   adapter keeps the latest message per key itself), so older messages must stay readable.
 */
export async function ensurePulsarNamespace(options: PulsarNamespaceOptions): Promise<PulsarNamespaceResult> {
  const admin = createPulsarAdmin({ webUrl: options.webUrl });
  return ensurePulsarNamespaceWith(admin, options);
}

export async function ensurePulsarNamespaceWith(
  admin: PulsarAdmin,
  options: Omit<PulsarNamespaceOptions, "webUrl">,
): Promise<PulsarNamespaceResult> {
  const { tenant } = options;
  const namespace = `${tenant}/${options.namespace}`;
  const retention = options.retention ?? DEFAULT_RETENTION;
  const threshold = options.compactionThresholdBytes ?? DEFAULT_COMPACTION_THRESHOLD_BYTES;
  const compacted = options.compactedTopics ?? [Topics.memberships, Topics.blocks];

  async function step<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (err) {
      const detail = err instanceof Error ? err.message : String(err);
      throw new PulsarNamespaceError(`could not ${what} (namespace ${namespace}): ${detail}`, { cause: err });
    }
  }

  let createdTenant = false;
  if (!(await step(`look up tenant ${tenant}`, () => admin.tenantExists(tenant)))) {
    const clusters = await step("list the Pulsar clusters", () => admin.listClusters());
    if (clusters.length === 0)
      throw new PulsarNamespaceError(`no Pulsar cluster to create tenant ${tenant} in`);
    await step(`create tenant ${tenant}`, () => admin.createTenant(tenant, clusters));
    createdTenant = true;
  }
  const createdNamespace = await step("create the namespace", () => admin.createNamespace(namespace));
  await step("set the retention policy", () => admin.setNamespaceRetention(namespace, retention));
  await step("enable deduplication", () => admin.setNamespaceDeduplication(namespace, true));
  await step("disable the message TTL", () => admin.setNamespaceMessageTtl(namespace, 0));
  for (const topic of compacted) {
    const name = `${namespace}/${topic}`;
    await step(`create topic ${topic}`, () => admin.createTopic(name));
    await step(`set the compaction threshold of ${topic} (needs topic-level policies)`, () =>
      admin.setTopicCompactionThreshold(name, threshold),
    );
    await step(`set the retention of ${topic}`, () => admin.setTopicRetention(name, KEEP_FOREVER));
  }
  return { createdTenant, createdNamespace };
}
