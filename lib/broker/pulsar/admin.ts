/**
 * The few calls of Pulsar's admin REST API (`/admin/v2`) the broker adapter and its namespace
 * set-up need, over fetch.
 */
import type { MessagePosition } from "./message-id.ts";

export class PulsarAdminError extends Error {
  override readonly name = "PulsarAdminError";
  /** The HTTP status, or undefined when Pulsar could not be reached at all. */
  readonly status: number | undefined;
  readonly method: string;
  readonly path: string;

  constructor(method: string, path: string, status: number | undefined, detail: string, cause?: unknown) {
    super(
      `Pulsar admin ${method} ${path} failed: ${status === undefined ? "" : `HTTP ${status}: `}${detail}`,
      cause === undefined ? undefined : { cause },
    );
    this.method = method;
    this.path = path;
    this.status = status;
  }
}

export interface RetentionPolicy {
  /** -1 keeps acknowledged messages for ever (subject to the size limit). */
  readonly timeInMinutes: number;
  /** -1 sets no size limit. */
  readonly sizeInMB: number;
}

export interface PulsarAdmin {
  listClusters(): Promise<string[]>;
  tenantExists(tenant: string): Promise<boolean>;
  createTenant(tenant: string, allowedClusters: readonly string[]): Promise<void>;
  /** Deletes an empty tenant (tests clean up with it). */
  deleteTenant(tenant: string): Promise<void>;
  namespaceExists(namespace: string): Promise<boolean>;
  /** Creates the namespace (`tenant/name`); false when it already existed. */
  createNamespace(namespace: string): Promise<boolean>;
  setNamespaceRetention(namespace: string, policy: RetentionPolicy): Promise<void>;
  getNamespaceRetention(namespace: string): Promise<RetentionPolicy | undefined>;
  setNamespaceDeduplication(namespace: string, enabled: boolean): Promise<void>;
  getNamespaceDeduplication(namespace: string): Promise<boolean | undefined>;
  /** 0 disables the TTL explicitly, whatever the broker's default. */
  setNamespaceMessageTtl(namespace: string, seconds: number): Promise<void>;
  getNamespaceMessageTtl(namespace: string): Promise<number | undefined>;
  /** Creates a non-partitioned persistent topic; false when it already existed. */
  createTopic(topic: string): Promise<boolean>;
  setTopicCompactionThreshold(topic: string, bytes: number): Promise<void>;
  getTopicCompactionThreshold(topic: string): Promise<number | undefined>;
  setTopicRetention(topic: string, policy: RetentionPolicy): Promise<void>;
  getTopicRetention(topic: string): Promise<RetentionPolicy | undefined>;
  /** The position of the topic's last message; undefined when the topic is empty or does not exist. */
  lastMessagePosition(topic: string): Promise<MessagePosition | undefined>;
  /**
   * The durable subscriptions of a topic and how many messages each has not acknowledged
   * (`msgBacklog` in the topic's stats); empty when the topic does not exist. Readers' and Pulsar's
   * own (`__compaction`) subscriptions are left out.
   */
  subscriptionBacklogs(
    topic: string,
  ): Promise<{ readonly subscription: string; readonly messages: number }[]>;
  /** Deletes a topic and its subscriptions (tests clean up with it). */
  deleteTopic(topic: string): Promise<void>;
  listTopics(namespace: string): Promise<string[]>;
  deleteNamespace(namespace: string): Promise<void>;
}

export interface PulsarAdminOptions {
  /** Pulsar's web service, e.g. `http://127.0.0.1:8080`. */
  readonly webUrl: string;
  /** Per request. Default 10 s. */
  readonly timeoutMs?: number;
}

/** `tenant/namespace/topic` as a REST path (the topic's local name may hold URL-unsafe characters). */
function topicPath(topic: string): string {
  const [tenant, namespace, ...rest] = topic.split("/");
  return `/persistent/${tenant}/${namespace}/${encodeURIComponent(rest.join("/"))}`;
}

/** Pulsar answers errors as `{"reason": "..."}`, or as an HTML page from the servlet container. */
function errorDetail(body: string): string {
  try {
    const parsed = JSON.parse(body) as { reason?: unknown };
    if (typeof parsed.reason === "string") return parsed.reason;
  } catch {
    // not JSON
  }
  const title = /<title>([^<]*)<\/title>/i.exec(body)?.[1];
  return (title ?? body).trim().slice(0, 500) || "(no detail)";
}

export function createPulsarAdmin(options: PulsarAdminOptions): PulsarAdmin {
  const base = `${options.webUrl.replace(/\/+$/, "")}/admin/v2`;
  const timeoutMs = options.timeoutMs ?? 10_000;

  async function call(
    method: "GET" | "PUT" | "POST" | "DELETE",
    path: string,
    body?: unknown,
    accept: readonly number[] = [],
  ): Promise<{ status: number; text: string }> {
    // Reads are retried once on a network error: a pooled connection may have been dropped.
    const attempts = method === "GET" ? 2 : 1;
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        response = await fetch(`${base}${path}`, {
          method,
          signal: AbortSignal.timeout(timeoutMs),
          ...(body === undefined
            ? {}
            : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
        });
      } catch (err) {
        if (attempt < attempts) continue;
        throw new PulsarAdminError(method, path, undefined, `cannot reach ${base}`, err);
      }
      const text = await response.text();
      if (response.ok || accept.includes(response.status)) return { status: response.status, text };
      throw new PulsarAdminError(method, path, response.status, errorDetail(text));
    }
  }

  const json = <T>(text: string): T | undefined => (text.trim() === "" ? undefined : (JSON.parse(text) as T));

  const readRetention = (text: string): RetentionPolicy | undefined => {
    const policy = json<{ retentionTimeInMinutes?: number; retentionSizeInMB?: number }>(text);
    if (policy?.retentionTimeInMinutes === undefined || policy.retentionSizeInMB === undefined)
      return undefined;
    return { timeInMinutes: policy.retentionTimeInMinutes, sizeInMB: policy.retentionSizeInMB };
  };
  const writeRetention = (policy: RetentionPolicy) => ({
    retentionTimeInMinutes: policy.timeInMinutes,
    retentionSizeInMB: policy.sizeInMB,
  });

  async function lastMessagePosition(topic: string): Promise<MessagePosition | undefined> {
    const { status, text } = await call("GET", `${topicPath(topic)}/lastMessageId`, undefined, [404]);
    if (status === 404) return undefined;
    // Ledger and entry ids are 64-bit: read them from the text, not through a JS number.
    const field = (name: string) => {
      const match = new RegExp(`"${name}"\\s*:\\s*(-?\\d+)`).exec(text);
      if (match?.[1] === undefined) {
        throw new PulsarAdminError(
          "GET",
          `${topicPath(topic)}/lastMessageId`,
          status,
          `no ${name} in ${text}`,
        );
      }
      return BigInt(match[1]);
    };
    const ledgerId = field("ledgerId");
    const entryId = field("entryId");
    const batchIndex = /"batchIndex"/.test(text) ? Number(field("batchIndex")) : -1;
    if (ledgerId < 0n) return undefined;
    // The ledgers still there: retention may have deleted the one holding the last message (a
    // topic reloaded since writes to it goes on in a new, empty ledger), and then nothing is retained.
    const stats = await call("GET", `${topicPath(topic)}/internalStats`, undefined, [404]);
    if (stats.status === 404) return undefined;
    const ledgers = json<{ ledgers?: { ledgerId: number; entries: number }[] }>(stats.text)?.ledgers ?? [];
    if (entryId >= 0n) {
      return ledgers.some((ledger) => BigInt(ledger.ledgerId) === ledgerId)
        ? { ledgerId, entryId, batchIndex }
        : undefined;
    }
    // Entry -1: the current ledger is empty, so the last message (if any) ends an earlier ledger.
    let last: MessagePosition | undefined;
    for (const ledger of ledgers) {
      if (ledger.entries > 0 && (last === undefined || BigInt(ledger.ledgerId) > last.ledgerId)) {
        last = { ledgerId: BigInt(ledger.ledgerId), entryId: BigInt(ledger.entries - 1), batchIndex: -1 };
      }
    }
    return last;
  }

  return {
    async listClusters() {
      return json<string[]>((await call("GET", "/clusters")).text) ?? [];
    },
    async tenantExists(tenant) {
      return (await call("GET", `/tenants/${tenant}`, undefined, [404])).status !== 404;
    },
    async createTenant(tenant, allowedClusters) {
      await call("PUT", `/tenants/${tenant}`, { adminRoles: [], allowedClusters }, [409]);
    },
    async deleteTenant(tenant) {
      await call("DELETE", `/tenants/${tenant}`, undefined, [404]);
    },
    async namespaceExists(namespace) {
      return (await call("GET", `/namespaces/${namespace}`, undefined, [404])).status !== 404;
    },
    async createNamespace(namespace) {
      return (await call("PUT", `/namespaces/${namespace}`, undefined, [409])).status !== 409;
    },
    async setNamespaceRetention(namespace, policy) {
      await call("POST", `/namespaces/${namespace}/retention`, writeRetention(policy));
    },
    async getNamespaceRetention(namespace) {
      return readRetention((await call("GET", `/namespaces/${namespace}/retention`)).text);
    },
    async setNamespaceDeduplication(namespace, enabled) {
      await call("POST", `/namespaces/${namespace}/deduplication`, enabled);
    },
    async getNamespaceDeduplication(namespace) {
      return json<boolean>((await call("GET", `/namespaces/${namespace}/deduplication`)).text);
    },
    async setNamespaceMessageTtl(namespace, seconds) {
      await call("POST", `/namespaces/${namespace}/messageTTL`, seconds);
    },
    async getNamespaceMessageTtl(namespace) {
      return json<number>((await call("GET", `/namespaces/${namespace}/messageTTL`)).text);
    },
    async createTopic(topic) {
      return (await call("PUT", topicPath(topic), undefined, [409])).status !== 409;
    },
    async setTopicCompactionThreshold(topic, bytes) {
      await call("POST", `${topicPath(topic)}/compactionThreshold`, bytes);
    },
    async getTopicCompactionThreshold(topic) {
      return json<number>((await call("GET", `${topicPath(topic)}/compactionThreshold`)).text);
    },
    async setTopicRetention(topic, policy) {
      await call("POST", `${topicPath(topic)}/retention`, writeRetention(policy));
    },
    async getTopicRetention(topic) {
      return readRetention((await call("GET", `${topicPath(topic)}/retention`)).text);
    },
    lastMessagePosition,
    async subscriptionBacklogs(topic) {
      const { status, text } = await call("GET", `${topicPath(topic)}/stats`, undefined, [404]);
      if (status === 404) return [];
      const stats = json<{ subscriptions?: Record<string, { msgBacklog?: number; isDurable?: boolean }> }>(
        text,
      );
      return Object.entries(stats?.subscriptions ?? {})
        .filter(([name, sub]) => sub.isDurable !== false && !name.startsWith("__"))
        .map(([subscription, sub]) => ({ subscription, messages: sub.msgBacklog ?? 0 }));
    },
    async deleteTopic(topic) {
      await call("DELETE", `${topicPath(topic)}?force=true`, undefined, [404]);
    },
    async listTopics(namespace) {
      return json<string[]>((await call("GET", `/namespaces/${namespace}/topics`)).text) ?? [];
    },
    async deleteNamespace(namespace) {
      await call("DELETE", `/namespaces/${namespace}`, undefined, [404]);
    },
  };
}
