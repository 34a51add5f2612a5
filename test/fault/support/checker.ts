// The invariants of issue 6, checked on a recorded history (history.ts) once the fault has healed
// and the system is quiet:
//   I1 every acknowledged send is displayed by every device it targets;
//   I2 no device displays a message twice (by id, or the same send under two ids), and history
//      stores each send once;
//   I3 per device and conversation, displays follow the conversation's seq (stored seqs are
//      1..n, each once);
//   I4 the server counts a message as delivered to a user (a receipt) only once an app of that
//      user displayed it;
//   I5 every answer to a send (retries included) carries the id the message is stored and shown
//      under.
import type { DeviceKey, DisplayRecord, FaultHistory, StoredRecord } from "./history.ts";

export type Invariant = "I1" | "I2" | "I3" | "I4" | "I5";

export interface Violation {
  readonly invariant: Invariant;
  readonly detail: string;
  readonly device?: DeviceKey;
  readonly conversationId?: string;
  readonly messageId?: string;
  readonly clientMessageId?: string;
}

export interface CheckSummary {
  readonly ackedSends: number;
  /** Send calls the app repeated with a client_message_id it had used (after a failure or on purpose). */
  readonly repeatedSends: number;
  /**
   * Sends whose first answer was already "duplicate": an earlier attempt reached the server but its
   * answer was lost (a sender killed before answering, a stream cut), and the retry found it.
   */
  readonly answeredAsRetry: number;
  readonly displays: number;
  /** (device, message) pairs I1 required. */
  readonly expectedDisplays: number;
  readonly receipts: number;
  readonly devices: number;
}

export interface CheckResult {
  readonly violations: readonly Violation[];
  readonly summary: CheckSummary;
}

const sendKey = (sender: DeviceKey, clientMessageId: string) => `${sender}|${clientMessageId}`;

export function check(history: FaultHistory): CheckResult {
  const violations: Violation[] = [];
  const conversations = new Map(history.conversations.map((c) => [c.conversationId, c]));

  const byDevice = new Map<DeviceKey, DisplayRecord[]>();
  for (const display of history.displays) {
    let list = byDevice.get(display.device);
    if (list === undefined) {
      list = [];
      byDevice.set(display.device, list);
    }
    list.push(display);
  }

  // The id each send was first answered with: the one every later answer, copy and display must carry.
  const firstId = new Map<string, string>();
  let ackedSends = 0;
  let repeatedSends = 0;
  let answeredAsRetry = 0;
  for (const send of history.sends) {
    if (send.attempts.length > 1) repeatedSends += 1;
    const answered = send.attempts.filter((a) => a.messageId !== undefined);
    const first = answered[0]?.messageId;
    if (first === undefined) continue;
    ackedSends += 1;
    if (answered[0]?.duplicate === true) answeredAsRetry += 1;
    firstId.set(sendKey(send.sender, send.clientMessageId), first);
    const others = [...new Set(answered.map((a) => a.messageId))].filter((id) => id !== first);
    if (others.length > 0) {
      violations.push({
        invariant: "I5",
        detail: `send ${send.clientMessageId} of ${send.sender} was answered with ${first} and later with ${others.join(", ")}`,
        device: send.sender,
        conversationId: send.conversationId,
        messageId: first,
        clientMessageId: send.clientMessageId,
      });
    }
  }

  // I1: every target device displayed every acknowledged send.
  const displayedSends = new Map<DeviceKey, Set<string>>();
  for (const [device, list] of byDevice) {
    displayedSends.set(device, new Set(list.map((d) => sendKey(d.sender, d.clientMessageId))));
  }
  let expectedDisplays = 0;
  for (const send of history.sends) {
    const messageId = firstId.get(sendKey(send.sender, send.clientMessageId));
    if (messageId === undefined) continue;
    const conversation = conversations.get(send.conversationId);
    if (conversation === undefined) {
      violations.push({
        invariant: "I1",
        detail: `send ${send.clientMessageId} went to conversation ${send.conversationId}, which the history does not describe`,
        conversationId: send.conversationId,
        clientMessageId: send.clientMessageId,
      });
      continue;
    }
    for (const device of conversation.devices) {
      if (device === send.sender) continue;
      expectedDisplays += 1;
      if (!displayedSends.get(device)?.has(sendKey(send.sender, send.clientMessageId))) {
        violations.push({
          invariant: "I1",
          detail: `${device} never displayed ${messageId} (send ${send.clientMessageId} of ${send.sender}), which the server acknowledged`,
          device,
          conversationId: send.conversationId,
          messageId,
          clientMessageId: send.clientMessageId,
        });
      }
    }
  }

  // I2 and I3 on each device's displays.
  for (const [device, list] of byDevice) {
    const idsShown = new Map<string, number>();
    const idsOfSend = new Map<string, Set<string>>();
    const lastSeq = new Map<string, DisplayRecord>();
    for (const display of list) {
      const times = (idsShown.get(display.messageId) ?? 0) + 1;
      idsShown.set(display.messageId, times);
      if (times === 2) {
        violations.push({
          invariant: "I2",
          detail: `${device} displayed ${display.messageId} (seq ${display.seq}) more than once`,
          device,
          conversationId: display.conversationId,
          messageId: display.messageId,
          clientMessageId: display.clientMessageId,
        });
      }
      const key = sendKey(display.sender, display.clientMessageId);
      let ids = idsOfSend.get(key);
      if (ids === undefined) {
        ids = new Set();
        idsOfSend.set(key, ids);
      }
      ids.add(display.messageId);
      if (ids.size === 2) {
        violations.push({
          invariant: "I2",
          detail: `${device} displayed send ${display.clientMessageId} of ${display.sender} under two ids: ${[...ids].join(", ")}`,
          device,
          conversationId: display.conversationId,
          clientMessageId: display.clientMessageId,
        });
      }
      const previous = lastSeq.get(display.conversationId);
      if (previous !== undefined && display.seq <= previous.seq) {
        violations.push({
          invariant: "I3",
          detail: `${device} displayed seq ${display.seq} (${display.messageId}) after seq ${previous.seq} (${previous.messageId})`,
          device,
          conversationId: display.conversationId,
          messageId: display.messageId,
        });
      }
      lastSeq.set(display.conversationId, display);
    }
  }

  // What history stores: each send once, seqs 1..n, each once; displays carry the stored seq.
  const storedById = new Map<string, StoredRecord>();
  for (const [conversationId, messages] of Object.entries(history.stored)) {
    const copies = new Map<string, StoredRecord[]>();
    for (const message of messages) {
      if (!storedById.has(message.messageId)) storedById.set(message.messageId, message);
      const key = sendKey(message.sender, message.clientMessageId);
      copies.set(key, [...(copies.get(key) ?? []), message]);
    }
    for (const [, list] of copies) {
      if (list.length > 1) {
        violations.push({
          invariant: "I2",
          detail: `history stores send ${list[0]?.clientMessageId} of ${list[0]?.sender} ${list.length} times, at seqs ${list.map((m) => m.seq).join(", ")}`,
          conversationId,
          clientMessageId: list[0]?.clientMessageId,
        });
      }
    }
    const seqs = messages.map((m) => m.seq).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const wrong = seqs.findIndex((seq, i) => seq !== BigInt(i + 1));
    if (wrong !== -1) {
      violations.push({
        invariant: "I3",
        detail: `conversation ${conversationId} stores seqs ${summarizeSeqs(seqs)}, not 1..${seqs.length} each once`,
        conversationId,
      });
    }
  }
  for (const display of history.displays) {
    const stored = storedById.get(display.messageId);
    if (stored !== undefined && stored.seq !== display.seq) {
      violations.push({
        invariant: "I3",
        detail: `${display.device} displayed ${display.messageId} at seq ${display.seq}; history stores it at seq ${stored.seq}`,
        device: display.device,
        conversationId: display.conversationId,
        messageId: display.messageId,
      });
    }
  }

  // I4: a receipt (the server recorded the reader's ack) covers only what the reader displayed before.
  const seqsOf = new Map<string, Map<bigint, { messageId: string; sender: DeviceKey }>>();
  const learn = (conversationId: string, seq: bigint, messageId: string, sender: DeviceKey) => {
    let bySeq = seqsOf.get(conversationId);
    if (bySeq === undefined) {
      bySeq = new Map();
      seqsOf.set(conversationId, bySeq);
    }
    if (!bySeq.has(seq)) bySeq.set(seq, { messageId, sender });
  };
  for (const [conversationId, messages] of Object.entries(history.stored)) {
    for (const m of messages) learn(conversationId, m.seq, m.messageId, m.sender);
  }
  for (const d of history.displays) learn(d.conversationId, d.seq, d.messageId, d.sender);
  // Receipts speak for the reader's user: history's watermark is the highest seq up to which every
  // message addressed to the user is acknowledged, the user's own messages counting as covered.
  const userOf = (device: DeviceKey) => device.slice(0, device.indexOf("/"));
  const firstDisplayAt = new Map<string, number>();
  for (const d of history.displays) {
    const key = `${userOf(d.device)}|${d.messageId}`;
    if (!firstDisplayAt.has(key)) firstDisplayAt.set(key, d.at);
  }
  const sentHere = new Set(firstId.values());
  const reported = new Set<string>();
  for (const receipt of history.receipts) {
    const conversation = conversations.get(receipt.conversationId);
    if (conversation === undefined || !conversation.devices.includes(receipt.reader)) continue;
    const reader = userOf(receipt.reader);
    const bySeq = seqsOf.get(receipt.conversationId) ?? new Map();
    const covered =
      receipt.messageIds.length > 0
        ? receipt.messageIds.map((messageId) => ({
            messageId,
            sender: storedById.get(messageId)?.sender ?? "",
            seq: storedById.get(messageId)?.seq,
          }))
        : [...bySeq]
            .filter(([seq]) => seq <= receipt.upToSeq)
            .map(([seq, m]) => ({ messageId: m.messageId, sender: m.sender, seq }));
    for (const message of covered) {
      if (message.sender !== "" && userOf(message.sender) === reader) continue;
      // Only this history's sends: a population reused across runs has older messages whose
      // displays were recorded by an earlier run.
      if (!sentHere.has(message.messageId)) continue;
      const key = `${reader}|${message.messageId}`;
      const shownAt = firstDisplayAt.get(key);
      if ((shownAt === undefined || shownAt > receipt.at) && !reported.has(key)) {
        reported.add(key);
        violations.push({
          invariant: "I4",
          detail: `${receipt.observer} saw ${receipt.reader}'s ${receipt.kind} receipt up to seq ${receipt.upToSeq} covering ${message.messageId}${message.seq === undefined ? "" : ` (seq ${message.seq})`}, which no device of ${reader} had displayed${shownAt === undefined ? "" : " yet"}`,
          device: receipt.reader,
          conversationId: receipt.conversationId,
          messageId: message.messageId,
        });
      }
    }
  }

  // I5: copies and displays carry the id the send was answered with.
  const wrongIds = new Set<string>();
  const checkId = (sender: DeviceKey, clientMessageId: string, messageId: string, where: string) => {
    const expected = firstId.get(sendKey(sender, clientMessageId));
    if (expected === undefined || expected === messageId) return;
    const key = `${sendKey(sender, clientMessageId)}|${messageId}`;
    if (wrongIds.has(key)) return;
    wrongIds.add(key);
    violations.push({
      invariant: "I5",
      detail: `send ${clientMessageId} of ${sender} was answered with ${expected} but ${where} has it as ${messageId}`,
      device: sender,
      messageId,
      clientMessageId,
    });
  };
  for (const messages of Object.values(history.stored)) {
    for (const m of messages) checkId(m.sender, m.clientMessageId, m.messageId, "history");
  }
  for (const d of history.displays) checkId(d.sender, d.clientMessageId, d.messageId, d.device);

  return {
    violations,
    summary: {
      ackedSends,
      repeatedSends,
      answeredAsRetry,
      displays: history.displays.length,
      expectedDisplays,
      receipts: history.receipts.length,
      devices: new Set(history.conversations.flatMap((c) => c.devices)).size,
    },
  };
}

/** Violations grouped by invariant with the first few of each: readable in an assertion message. */
export function describeViolations(violations: readonly Violation[], perInvariant = 5): string {
  if (violations.length === 0) return "no violations";
  const groups = new Map<Invariant, Violation[]>();
  for (const v of violations) groups.set(v.invariant, [...(groups.get(v.invariant) ?? []), v]);
  return [...groups]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(
      ([invariant, list]) =>
        `${invariant}: ${list.length} violation(s)\n${list
          .slice(0, perInvariant)
          .map((v) => `  - ${v.detail}`)
          .join("\n")}${list.length > perInvariant ? `\n  … and ${list.length - perInvariant} more` : ""}`,
    )
    .join("\n");
}

/** The invariants violated, each once, sorted: what a control run's assertion names. */
export function violatedInvariants(violations: readonly Violation[]): Invariant[] {
  return [...new Set(violations.map((v) => v.invariant))].sort();
}

function summarizeSeqs(seqs: readonly bigint[]): string {
  return seqs.length <= 20 ? seqs.join(",") : `${seqs.slice(0, 20).join(",")},… (${seqs.length})`;
}
